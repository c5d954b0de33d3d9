"""A store that has been in use for a year, for the UI benchmark: patients, studies, series,
a few images each, their jobs, analyses, findings, pictures, reports and feedback, with a mix
of states and triage priorities, made in memory and written in one transaction."""

from __future__ import annotations

import json
import random
import time
from datetime import datetime, timezone
from typing import Any

from appliance.bench.ui.results import SeedCounts
from appliance.domain import PRIORITY_RANK
from appliance.samples import sample_uid
from appliance.store import Store
from appliance.store.benchmarks import count_contents, insert_rows

_TABLES: dict[str, str] = {
    "patients": "id patient_key patient_id patient_name birth_date sex",
    "studies": (
        "id study_uid patient_ref accession_number study_date study_time description"
        " first_received_at last_received_at triage triage_rank triage_reason"
    ),
    "series": "id series_uid study_ref modality body_part series_number description",
    "instances": (
        "id sop_instance_uid series_ref sop_class_uid transfer_syntax_uid view_position"
        " photometric rows columns frames instance_number file_name size_bytes sha256 source"
        " calling_aet peer_address received_at state"
    ),
    "jobs": (
        "id instance_ref kind state attempts max_attempts lease_owner lease_expires heartbeat_at"
        " error created_at updated_at"
    ),
    "analyses": "id instance_ref job_ref state reason priority priority_rank summary updated_at",
    "findings": (
        "id job_ref instance_ref model version model_sha256 backend precision state reason"
        " priority summary key_frame duration_ms result created_at"
    ),
    "artifacts": "id finding_ref kind label frame file_name media_type width height detail",
    "impressions": "id study_ref user_ref text final at",
    "feedback": "id finding_ref label verdict comment user_ref at",
}

CR_CLASS = "1.2.840.10008.5.1.4.1.1.1"
US_CLASS = "1.2.840.10008.5.1.4.1.1.6.1"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
CHEST_SHA = "4c7ca2adaacaa43a811ccb0ce0d5dc45ca937f8c2d34df115a64d981d7615d59"
US_SHA = "9f1e0c8d7b6a5f4e3d2c1b0a99887766554433221100ffeeddccbbaa99887766"
# (label, display, priority, share of chest images where it is the top finding)
CHEST_LABELS = (
    ("pneumothorax", "Pneumothorax", "urgent", 0.02),
    ("pleural_effusion", "Pleural effusion", "urgent", 0.04),
    ("lung_nodule", "Lung nodule or mass", "review", 0.08),
    ("consolidation", "Consolidation", "review", 0.10),
    ("cardiomegaly", "Cardiomegaly", "routine", 0.08),
)
# Image outcomes other than findings, with their shares (the rest get findings).
OTHER_OUTCOMES = (("no_model", 0.06), ("held_back", 0.03), ("failed", 0.01))
DAY_S = 86_400.0
REPORTED_AFTER_S = 2 * DAY_S  # studies older than this have a final report
WAITING_SHARE = 0.005  # the newest studies: images still received or being analysed


class Seeder:
    """Rows for a store that has been in use for a year, made in memory, written at once."""

    def __init__(self, studies: int, author_id: int, seed: int = 1) -> None:
        self.rng = random.Random(seed)  # noqa: S311 (made-up data, not secrets)
        self.studies = studies
        self.author_id = author_id  # who reported the studies and gave feedback
        self.now = time.time()
        self.rows: dict[str, list[tuple[Any, ...]]] = {table: [] for table in _TABLES}
        self.patients = max(1, round(studies * 0.6))

    def build(self) -> dict[str, list[tuple[Any, ...]]]:
        spread = sorted(self.rng.uniform(0, 365 * DAY_S) for _ in range(self.studies))
        for number in range(1, self.patients + 1):
            self._patient(number)
        waiting_from = self.studies - max(1, round(self.studies * WAITING_SHARE))
        for index, age_s in enumerate(reversed(spread)):  # oldest first: ids follow time
            self._study(index + 1, age_s, waiting_now=index >= waiting_from)
        return self.rows

    def _add(self, table: str, *values: Any) -> int:
        rows = self.rows[table]
        row_id = len(rows) + 1
        rows.append((row_id, *values))
        return row_id

    def _patient(self, number: int) -> None:
        sex = self.rng.choice("FM")
        born = f"{self.rng.randint(1935, 2020)}{self.rng.randint(1, 12):02d}15"
        self._add(
            "patients",
            f"BENCH{number:07d}",
            f"BENCH{number:07d}",
            f"PATIENT^{number:07d}",
            born,
            sex,
        )

    def _study(self, number: int, age_s: float, waiting_now: bool) -> None:
        at = self.now - age_s
        chest = self.rng.random() < 0.7
        study_id = self._add(
            "studies",
            _uid("study", number),
            self.rng.randint(1, self.patients),
            f"ACC{number:08d}",
            _day(at),
            "093000",
            "CHEST PA" if chest else "ABDOMEN US",
            _iso(at),
            _iso(at + 60),
            "pending",
            3,
            "",
        )
        series_id = self._add(
            "series",
            _uid("series", number),
            study_id,
            "CR" if chest else "US",
            "CHEST" if chest else "ABDOMEN",
            1,
            "chest" if chest else "abdomen",
        )
        images = self.rng.randint(1, 2) if chest else self.rng.randint(2, 4)
        outcomes = [
            self._image(series_id, number, i, at + i, chest, waiting_now) for i in range(images)
        ]
        self._triage(study_id, [o for o in outcomes if o is not None])
        if age_s > REPORTED_AFTER_S:
            self._add("impressions", study_id, self.author_id, "Reported.", 1, _iso(at + 3600))

    def _image(
        self, series_id: int, study: int, index: int, at: float, chest: bool, waiting: bool
    ) -> tuple[str, int, str] | None:
        """One instance and its jobs; its (priority, rank, summary) once analysed."""
        instance_id = len(self.rows["instances"]) + 1
        self._add(
            "instances",
            _uid("instance", study, index),
            series_id,
            CR_CLASS if chest else US_CLASS,
            EXPLICIT_LE,
            "PA" if chest else "",
            "MONOCHROME2" if chest else "RGB",
            2048 if chest else 480,
            1700 if chest else 640,
            1,
            index + 1,
            f"bench/{instance_id:08d}.dcm",
            6_000_000 if chest else 900_000,
            f"{instance_id:064x}",
            "dicom",
            "MODALITY",
            "127.0.0.1",
            _iso(at),
            "present",
        )
        if waiting:
            state = self.rng.choice(("queued", "running"))
            self._job(instance_id, "analyse", state, at)
            return None
        job_id = self._job(instance_id, "analyse", "done", at)
        outcome = self._analysis(instance_id, job_id, at + 2, chest)
        self._job(instance_id, "pictures", "done", at + 3)
        return outcome

    def _job(self, instance_id: int, kind: str, state: str, at: float) -> int:
        running = state == "running"
        return self._add(
            "jobs",
            instance_id,
            kind,
            state,
            0 if state == "queued" else 1,
            3,
            "bench:1:0" if running else None,
            at + 600 if running else None,
            None if state == "queued" else _iso(at + 0.5),
            "",
            _iso(at),
            _iso(at + 1),
        )

    def _analysis(
        self, instance_id: int, job_id: int, at: float, chest: bool
    ) -> tuple[str, int, str]:
        draw = self.rng.random()
        for state, share in OTHER_OUTCOMES:
            if draw < share:
                return self._other(instance_id, job_id, at, state)
            draw -= share
        priority, summary, result, label = self._chest_result() if chest else self._us_result()
        self._add(
            "analyses",
            instance_id,
            job_id,
            "findings",
            "",
            priority,
            PRIORITY_RANK[priority],
            summary,
            _iso(at),
        )
        finding_id = self._add(
            "findings",
            job_id,
            instance_id,
            result["model"],
            "0.1.0",
            result["model_sha256"],
            "onnxruntime-cpu",
            "int8",
            "findings",
            "",
            priority,
            summary,
            0,
            round(self.rng.uniform(20, 90), 3),
            json.dumps(result, sort_keys=True),
            _iso(at),
        )
        if label:
            self._pictures(finding_id, label)
            if self.rng.random() < 0.1:
                self._add(
                    "feedback",
                    finding_id,
                    label,
                    self.rng.choice(("agree", "disagree")),
                    "",
                    self.author_id,
                    _iso(at + 1800),
                )
        return priority, PRIORITY_RANK[priority], summary

    def _other(self, instance_id: int, job_id: int, at: float, state: str) -> tuple[str, int, str]:
        reasons = {
            "no_model": ("routine", "no model for this kind of image"),
            "held_back": ("review", "held back: the image is almost blank; check the image"),
            "failed": ("review", "failed: the image could not be decoded"),
        }
        priority, reason = reasons[state]
        self._add(
            "analyses",
            instance_id,
            job_id,
            state,
            reason,
            priority,
            PRIORITY_RANK[priority],
            reason,
            _iso(at),
        )
        return priority, PRIORITY_RANK[priority], reason

    def _chest_result(self) -> tuple[str, str, dict[str, Any], str]:
        draw, top = self.rng.random(), None
        for label, display, priority, share in CHEST_LABELS:
            if draw < share:
                top = (label, display, priority)
                break
            draw -= share
        labels = [
            {
                "label": label,
                "display": display,
                "priority": priority,
                "positive": top is not None and label == top[0],
                "score": round(
                    self.rng.uniform(0.6, 1.0)
                    if top and label == top[0]
                    else self.rng.uniform(0.0, 0.2),
                    6,
                ),
                "threshold": 0.3,
            }
            for label, display, priority, _ in CHEST_LABELS
        ]
        result = finding_result("demo-chest-xray", CHEST_SHA, labels, [])
        if top is None:
            return "routine", "no findings above the thresholds", result, ""
        score = next(x["score"] for x in labels if x["label"] == top[0])
        return top[2], f"{top[1]} {score:.2f} (threshold 0.30)", result, top[0]

    def _us_result(self) -> tuple[str, str, dict[str, Any], str]:
        fluid = self.rng.random() < 0.15
        area = round(self.rng.uniform(200, 3000), 1) if fluid else 0.0
        masks = [
            {
                "label": "free_fluid",
                "display": "Anechoic fluid",
                "positive": fluid,
                "area_mm2": area,
                "priority": "review",
            }
        ]
        result = finding_result("demo-ultrasound-fluid", US_SHA, [], masks)
        if not fluid:
            return "routine", "no findings above the thresholds", result, ""
        return "review", f"Anechoic fluid {area:,.0f} mm²", result, "free_fluid"

    def _pictures(self, finding_id: int, label: str) -> None:
        for kind in ("heatmap", "overlay"):
            number = len(self.rows["artifacts"]) + 1
            self._add(
                "artifacts",
                finding_id,
                kind,
                label,
                0,
                f"bench/{number:08d}-{kind}.png",
                "image/png",
                1024,
                1024,
                "{}",
            )

    def _triage(self, study_id: int, outcomes: list[tuple[str, int, str]]) -> None:
        """The study's priority as analyses.update_triage computes it: the most urgent image."""
        if not outcomes:
            return
        # Ties go to the newest image, as in update_triage (ORDER BY rank, updated_at DESC).
        priority, rank, summary = min(reversed(outcomes), key=lambda o: o[1])
        row = list(self.rows["studies"][study_id - 1])
        row[-3:] = [priority, rank, summary]
        self.rows["studies"][study_id - 1] = tuple(row)


def finding_result(
    model: str, sha: str, labels: list[dict[str, Any]], masks: list[dict[str, Any]]
) -> dict[str, Any]:
    """A finding's stored result, shaped like the worker's (provenance, labels, masks)."""
    return {
        "model": model,
        "version": "0.1.0",
        "model_sha256": sha,
        "backend": "onnxruntime-cpu",
        "precision": "int8",
        "providers": ["CPUExecutionProvider"],
        "frame": 0,
        "labels": labels,
        "masks": masks,
        "notes": [],
        "positives": [x["label"] for x in [*labels, *masks] if x["positive"]],
        "not_for_clinical_use": True,
        "caution": "Demo model trained on synthetic images only. Not for clinical use.",
        "timing": {"model_ms": 12.0, "preprocess_ms": 3.0, "postprocess_ms": 0.1},
    }


def _uid(*parts: object) -> str:
    return str(sample_uid("bench-ui", *parts))


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="microseconds")


def _day(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y%m%d")


def seed_store(store: Store, studies: int, author_id: int, seed: int = 1) -> None:
    """Write `studies` studies with everything that hangs off them, in one transaction;
    `author_id` is the user who reported them and gave feedback. The rows are what the
    receiver, worker and UI would have written."""
    rows = Seeder(studies, author_id, seed).build()
    tables = {table: (names.split(), rows[table]) for table, names in _TABLES.items()}
    insert_rows(store.conn, tables)


def count_store(store: Store) -> SeedCounts:
    """What the store holds, counted from its tables (not from what was meant to be there)."""
    return count_contents(store.conn)
