"""The demo set the end-to-end benchmark pushes, and the two ways it pushes it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
from pydicom.dataset import Dataset

from appliance.bench.e2e.results import E2EOptions, Pushed
from appliance.bench.harness.command import progress
from appliance.bench.harness.dicom import Sender

if TYPE_CHECKING:
    from pynetdicom.association import Association


@dataclass(frozen=True)
class DemoFile:
    """One demo file, held in memory so a push costs no disk read in this process."""

    kind: str
    path: Path
    dataset: Dataset  # read once; its UIDs are replaced before every push


@dataclass(frozen=True)
class DemoSet:
    """The files pushed in turn, so every scenario gets the same mix of chest and ultrasound."""

    files: tuple[DemoFile, ...]  # the files pushed, in push order
    left_out: tuple[str, ...]

    @classmethod
    def write(cls, folder: Path, chest_rows: int) -> DemoSet:
        """The demo set, less the image no model applies to: it would time the router only."""
        from appliance.phantoms.demo import NO_MODEL, write_demo_data

        items = write_demo_data(folder, chest_rows=chest_rows)
        files = tuple(
            DemoFile(item.kind, item.path, pydicom.dcmread(item.path))
            for item in items
            if item.expected_model != NO_MODEL
        )
        left = tuple(f"{i.kind}: no model applies" for i in items if i.expected_model == NO_MODEL)
        return cls(files, left)

    def pick(self, number: int) -> DemoFile:
        return self.files[number % len(self.files)]


def push_steady(sender: Sender, demo: DemoSet, options: E2EOptions) -> list[Pushed]:
    """One study per interval, each on its own association, like a modality sending them.

    The pace is kept against a fixed schedule, so a slow push does not shift the later ones.
    """
    started = time.monotonic()
    pushed = []
    for number in range(options.studies):
        delay = started + number * options.interval_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing the sender, not waiting for the appliance
        with sender.association() as assoc:
            pushed.append(push(sender, assoc, demo.pick(number)))
        if (number + 1) % 10 == 0:
            progress("e2e", f"steady: {number + 1}/{options.studies} pushed")
    return pushed


def push_burst(sender: Sender, demo: DemoSet, options: E2EOptions) -> list[Pushed]:
    """`options.burst` images on one association, each sent as soon as the last is answered."""
    with sender.association() as assoc:
        return [push(sender, assoc, demo.pick(number)) for number in range(options.burst)]


def push(sender: Sender, assoc: Association, file: DemoFile) -> Pushed:
    """C-STORE `file` under fresh UIDs; the time is taken as soon as the response is in."""
    uid, responded_at = sender.store_fresh(assoc, file.dataset)
    return Pushed(file.kind, uid, responded_at)
