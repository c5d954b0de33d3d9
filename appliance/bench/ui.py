"""`appliance bench ui`: the worklist's speed on a big store, and how soon new findings show.

Two stores are built in a temporary folder: an empty one, and one with --studies studies (a
year of a small clinic: patients, studies, series, a few images each, their jobs, analyses,
findings, pictures, reports and feedback, with a mix of states and triage priorities) written
straight into the store's schema in one transaction. `appliance ui` serves each in turn, in its
own process as on a device; --clients threads here sign in with real sessions (cookie and
CSRF token) and request the worklist page, and its JSON (/api/worklist) when the UI has one,
over keep-alive connections for --seconds each. The report puts the full store beside the
empty one.

Freshness: while the UI serves a store, the bench ingests a small image and commits its
analysis as the worker does (Store.complete), --images times, with one signed-in client polling
the worklist the way the worklist page's script does, at its interval; each figure runs from
the commit to the first response that shows the new finding.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlencode

import yaml

from appliance.bench.inference import percentile
from appliance.bench.options import OptionRow, add_options, option_values
from appliance.bench.peers import BenchError, _env, free_ports
from appliance.bench.results import _table
from appliance.config import Settings, load_settings
from appliance.domain import (
    PRIORITY_RANK,
    Analysis,
    AnalysisState,
    ModelOutcome,
    Origin,
    Source,
)
from appliance.store import Store, jobs, open_store, users
from appliance.store.db import utc_now

P95_TARGET_MS = 200.0  # the worklist page with the full store
FRESH_TARGET_MS = 2000.0  # commit -> the finding shows on an open worklist
PAGE = "/"
API = "/api/worklist"
UNCHANGED = "/api/worklist?v=(current)"  # as an open worklist asks while nothing changed
USER, PIN = "bench", "2468"
ADMIN_USER = "bench-admin"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
HTTP_TIMEOUT_S = 60.0
SERVING = re.compile(r"ui: serving on (http://[^\s/]+)/")
CSRF = re.compile(rb'<meta name="csrf-token" content="([^"]+)"')
WORKLIST_JS = Path(__file__).resolve().parent.parent / "web" / "static" / "worklist.js"
DEFAULT_POLL_S = 2.0  # only when neither the worklist module nor its script says


@dataclass(frozen=True)
class UIOptions:
    """What to build and how hard to ask; checked here so that the API refuses what the CLI
    does."""

    studies: int = 10_000
    seconds: float = 10.0
    clients: int = 10
    images: int = 20
    workdir: Path | None = None  # None: a temporary folder, removed at the end

    def __post_init__(self) -> None:
        if self.studies < 1 or self.clients < 1 or self.images < 1:
            raise BenchError("--studies, --clients and --images must be at least 1")
        if self.seconds <= 0:
            raise BenchError("--seconds must be positive")


# --- what is measured -----------------------------------------------------------------------


@dataclass(frozen=True)
class SeedCounts:
    """What a seeded store holds, counted back from it."""

    studies: int
    patients: int
    images: int
    findings: int
    triage: dict[str, int]  # studies by triage priority (pending: not analysed yet)
    states: dict[str, int]  # images by analysis state (none: not analysed yet)


@dataclass(frozen=True)
class Load:
    """One endpoint of one store under --clients concurrent clients."""

    store: str
    studies: int
    endpoint: str
    clients: int
    seconds: float
    latencies_ms: tuple[float, ...]  # of the answered requests (200, or 304: unchanged)
    errors: int  # other statuses, and requests that failed
    mean_bytes: float

    @property
    def requests(self) -> int:
        return len(self.latencies_ms) + self.errors

    @property
    def per_s(self) -> float:
        return len(self.latencies_ms) / self.seconds

    def p(self, q: float) -> float:
        return percentile(self.latencies_ms, q) if self.latencies_ms else float("nan")


@dataclass(frozen=True)
class Freshness:
    """Commit -> first poll response that shows the finding, for each new image."""

    store: str
    studies: int
    endpoint: str
    interval_s: float
    images: int
    delays_ms: tuple[float, ...]  # of the images seen within the wait

    @property
    def seen(self) -> int:
        return len(self.delays_ms)

    def p(self, q: float) -> float:
        return percentile(self.delays_ms, q) if self.delays_ms else float("nan")

    @property
    def met(self) -> bool:
        return self.seen == self.images and self.p(95) <= FRESH_TARGET_MS


@dataclass(frozen=True)
class UIReport:
    options: UIOptions
    cores: int
    threads: int  # the UI's waitress threads
    poll_interval_s: float
    poll_source: str  # where the interval was read
    stores: dict[str, SeedCounts]
    load: tuple[Load, ...]
    freshness: tuple[Freshness, ...]

    def find(self, store: str, endpoint: str) -> Load | None:
        return next((x for x in self.load if (x.store, x.endpoint) == (store, endpoint)), None)

    @property
    def full(self) -> str:
        return full_name(self.options.studies)

    @property
    def page_p95_ms(self) -> float:
        load = self.find(self.full, PAGE)
        return float("nan") if load is None else load.p(95)

    @property
    def page_met(self) -> bool:
        return self.page_p95_ms < P95_TARGET_MS

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["options"]["workdir"] = (
            None if self.options.workdir is None else str(self.options.workdir)
        )
        for load, out in zip(self.load, data["load"], strict=True):
            out.pop("latencies_ms")
            out.update(_load_figures(load))
        for fresh, out in zip(self.freshness, data["freshness"], strict=True):
            out.update(seen=fresh.seen, p50_ms=fresh.p(50), p95_ms=fresh.p(95), met=fresh.met)
        data["targets"] = {
            "page_p95_ms": self.page_p95_ms,
            "page_p95_target_ms": P95_TARGET_MS,
            "page_met": self.page_met,
            "fresh_target_ms": FRESH_TARGET_MS,
            "fresh_met": all(f.met for f in self.freshness),
        }
        return data


def _load_figures(load: Load) -> dict[str, float]:
    return {
        "requests": load.requests,
        "per_s": load.per_s,
        "p50_ms": load.p(50),
        "p95_ms": load.p(95),
        "p99_ms": load.p(99),
    }


def full_name(studies: int) -> str:
    return f"{studies:,} studies"


EMPTY = "empty"


# --- command line ---------------------------------------------------------------------------


# flag, UIOptions field, type, metavar, help
_OPTIONS: tuple[OptionRow, ...] = (
    ("--studies", "studies", int, "N", "studies in the full store"),
    ("--seconds", "seconds", float, "S", "seconds of load per endpoint and store"),
    ("--clients", "clients", int, "N", "concurrent signed-in clients"),
    ("--images", "images", int, "N", "new images per store for the freshness figure"),
)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `ui` to the `bench` sub-commands."""
    parser = commands.add_parser(
        "ui",
        help="worklist latency on an empty and a full store, and how soon new findings show",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    defaults = UIOptions()
    add_options(parser, _OPTIONS, defaults)
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the report here")
    workdir = "keep the stores and the UI's logs in a new folder under DIR"
    parser.add_argument("--workdir", type=Path, metavar="DIR", help=workdir)
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """The `bench ui` handler: print the report, write it as JSON if asked, return 0."""
    values = option_values(args, _OPTIONS)
    options = UIOptions(**values, workdir=args.workdir)
    report = run_ui_bench(options, sys.stdout)
    if args.json is not None:
        args.json.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    return 0


def run_ui_bench(options: UIOptions, out: TextIO) -> UIReport:
    """Run the whole benchmark, print its report to `out` and return it."""
    with _workdir(options.workdir) as workdir:
        report = _measure(options, workdir)
    out.write(format_report(report))
    out.flush()
    return report


def _measure(options: UIOptions, workdir: Path) -> UIReport:
    interval, source = poll_interval()
    stores: dict[str, SeedCounts] = {}
    loads: list[Load] = []
    fresh: list[Freshness] = []
    threads = 0
    for name, studies in ((EMPTY, 0), (full_name(options.studies), options.studies)):
        config, settings = _write_config(workdir / ("empty" if studies == 0 else "full"))
        threads = settings.ui.threads
        store = open_store(settings)
        try:
            stores[name] = _prepare(store, studies)
            with running_ui(config) as port:
                loads += _load_store(port, name, studies, options)
                fresh.append(_freshness(store, port, name, studies, options, interval))
        finally:
            store.close()
    cores = os.cpu_count() or 1
    return UIReport(options, cores, threads, interval, source, stores, tuple(loads), tuple(fresh))


def _prepare(store: Store, studies: int) -> SeedCounts:
    """The users every store needs (an admin, or the UI only offers its set-up), the studies."""
    conn = store.conn
    users.create_user(conn, ADMIN_USER, "Bench Admin", "admin", "13572468", "bench")
    users.create_user(conn, USER, "Bench Technologist", "technologist", PIN, "bench")
    author = users.create_user(
        conn, "bench-clinician", "Bench Clinician", "clinician", PIN, "bench"
    )
    if studies:
        started = time.monotonic()
        seed_store(store, studies, author.id)
        progress(f"seeded {studies:,} studies in {time.monotonic() - started:.1f} s")
    return count_store(store)


def _load_store(port: int, name: str, studies: int, options: UIOptions) -> list[Load]:
    """The page; the JSON in full (what a change costs); the JSON asked with the current
    version, as an open worklist asks while nothing changes (304)."""
    sessions = [Session.signed_in(port) for _ in range(options.clients)]
    try:
        paths = {PAGE: PAGE}
        status, body = sessions[0].get(API)
        if status == 200:
            paths[API] = API
            paths[UNCHANGED] = f"{API}?v={json.loads(body)['version']}"
        results = []
        for label, path in paths.items():
            progress(f"{name}: {options.clients} clients on {label} for {options.seconds:g} s")
            results.append(load(sessions, path, options.seconds, name, studies, label))
        return results
    finally:
        for session in sessions:
            session.close()


# --- the stores -----------------------------------------------------------------------------


def _write_config(folder: Path) -> tuple[Path, Settings]:
    """Default settings but for the data folder and loopback ports; the file `appliance ui`
    reads, and the settings this process opens the same store with."""
    folder.mkdir(parents=True, exist_ok=True)
    receiver_port, ui_port = free_ports(2)
    values = {
        "storage": {"data_dir": str(folder / "data"), "free_space_floor_mb": 0},
        "receiver": {"bind_address": "127.0.0.1", "port": receiver_port},
        "ui": {"bind_address": "127.0.0.1", "port": ui_port},
    }
    config = folder / "appliance.yaml"
    config.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    return config, load_settings(config)


# Rows of each table, in the order foreign keys need them.
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
            "held_back": ("review", "held back: the image is almost blank; retake it"),
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
        result = _result("demo-chest-xray", CHEST_SHA, labels, [])
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
        result = _result("demo-ultrasound-fluid", US_SHA, [], masks)
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


def _result(
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


def seed_store(store: Store, studies: int, author_id: int, seed: int = 1) -> None:
    """Write `studies` studies with everything that hangs off them, in one transaction;
    `author_id` is the user who reported them and gave feedback.

    Straight SQL into the store's own tables (ids assigned here) is what makes 10,000 studies
    take seconds; the rows are what the receiver, worker and UI would have written.
    """
    rows = Seeder(studies, author_id, seed).build()
    conn = store.conn
    conn.execute("BEGIN IMMEDIATE")
    try:
        for table, names in _TABLES.items():
            if not rows[table]:
                continue
            columns = names.split()
            marks = ", ".join("?" * len(columns))
            sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"  # noqa: S608
            conn.executemany(sql, rows[table])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def count_store(store: Store) -> SeedCounts:
    """What the store holds, counted from its tables (not from what was meant to be there)."""
    conn = store.conn

    def one(sql: str) -> int:
        return int(conn.execute(sql).fetchone()[0])

    triage = dict(conn.execute("SELECT triage, COUNT(*) FROM studies GROUP BY 1").fetchall())
    states = dict(
        conn.execute(
            "SELECT COALESCE(a.state, 'none'), COUNT(*) FROM instances i"
            " LEFT JOIN analyses a ON a.instance_ref = i.id GROUP BY 1"
        ).fetchall()
    )
    return SeedCounts(
        studies=one("SELECT COUNT(*) FROM studies"),
        patients=one("SELECT COUNT(*) FROM patients"),
        images=one("SELECT COUNT(*) FROM instances"),
        findings=one("SELECT COUNT(*) FROM findings"),
        triage=triage,
        states=states,
    )


def _uid(*parts: object) -> str:
    from appliance.samples import sample_uid

    return str(sample_uid("bench-ui", *parts))


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="microseconds")


def _day(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y%m%d")


# --- the UI and its clients -----------------------------------------------------------------


@contextmanager
def running_ui(config: Path) -> Iterator[int]:
    """`appliance ui` on this configuration for the block; its port. Stopped with SIGTERM."""
    log = config.parent / "ui.log"
    command = [sys.executable, "-m", "appliance", "--config", str(config), "ui"]
    with log.open("w", encoding="utf-8") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env={**_env(), "PYTHONUNBUFFERED": "1"}
        )
    try:
        yield _wait_serving(process, log)
    finally:
        _stop(process)


def _wait_serving(process: subprocess.Popen[bytes], log: Path) -> int:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        match = SERVING.search(log.read_text(encoding="utf-8", errors="replace"))
        if match:
            return int(match.group(1).rsplit(":", 1)[1])
        if process.poll() is not None:
            break
        time.sleep(0.05)
    text = log.read_text(encoding="utf-8", errors="replace")
    raise BenchError(f"appliance ui did not start:\n{text[-2000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Session:
    """One signed-in browser, as far as the server can tell: a keep-alive connection, the
    session cookie and the CSRF token."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookie = ""
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT_S)

    @classmethod
    def signed_in(cls, port: int, username: str = USER, pin: str = PIN) -> Session:
        session = cls(port)
        status, page = session.get("/signin")
        token = CSRF.search(page)
        if status != 200 or token is None:
            raise BenchError(f"GET /signin answered {status} without a CSRF token")
        form = {"username": username, "pin": pin, "csrf_token": token.group(1).decode()}
        status, _ = session.request("POST", "/signin", urlencode(form).encode())
        if status != 302:
            raise BenchError(f"signing in as {username!r} answered {status}, not a redirect")
        return session

    def get(self, path: str) -> tuple[int, bytes]:
        return self.request("GET", path)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """One request; a connection the server closed is opened again once."""
        headers = {"Cookie": self.cookie} if self.cookie else {}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            return self._send(method, path, body, headers)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            self.conn.close()
            return self._send(method, path, body, headers)

    def _send(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        data = response.read()
        for header in response.headers.get_all("Set-Cookie") or []:
            cookie: SimpleCookie = SimpleCookie(header)
            self.cookie = "; ".join(f"{k}={m.value}" for k, m in cookie.items())
        return response.status, data

    def close(self) -> None:
        self.conn.close()


def load(
    sessions: Sequence[Session],
    endpoint: str,
    seconds: float,
    store: str,
    studies: int,
    label: str = "",
) -> Load:
    """Every session asks for `endpoint` back to back for `seconds`, all starting together;
    the result is named `label` (the endpoint itself by default)."""
    for session in sessions:  # warm: templates compiled, connections open, caches filled
        session.get(endpoint)
    start = threading.Barrier(len(sessions) + 1)
    results: list[tuple[list[float], int, int]] = [([], 0, 0)] * len(sessions)

    def client(index: int, session: Session) -> None:
        start.wait()
        results[index] = _client_loop(session, endpoint, end_at[0])

    end_at = [0.0]
    workers = [
        threading.Thread(target=client, args=(i, s), name=f"bench-client-{i}")
        for i, s in enumerate(sessions)
    ]
    for worker in workers:
        worker.start()
    end_at[0] = time.monotonic() + seconds
    start.wait()
    for worker in workers:
        worker.join()
    latencies = [ms for result in results for ms in result[0]]
    errors = sum(result[1] for result in results)
    total_bytes = sum(result[2] for result in results)
    mean = total_bytes / len(latencies) if latencies else 0.0
    name = label or endpoint
    return Load(store, studies, name, len(sessions), seconds, tuple(latencies), errors, mean)


def _client_loop(session: Session, endpoint: str, end_at: float) -> tuple[list[float], int, int]:
    latencies: list[float] = []
    errors = size = 0
    while time.monotonic() < end_at:
        started = time.perf_counter()
        try:
            status, body = session.get(endpoint)
        except OSError:
            errors += 1
            continue
        if status not in (200, 304):  # 304: nothing changed since the version asked with
            errors += 1
            continue
        latencies.append((time.perf_counter() - started) * 1000)
        size += len(body)
    return latencies, errors, size


# --- freshness ------------------------------------------------------------------------------


def poll_interval() -> tuple[float, str]:
    """How often the open worklist asks for news: the worklist module's constant, else the
    interval in its script, else DEFAULT_POLL_S (and the report says which)."""
    from appliance.web import worklist

    for name in ("POLL_S", "POLL_INTERVAL_S", "REFRESH_S", "REFRESH_INTERVAL_S"):
        value = getattr(worklist, name, None)
        if isinstance(value, (int, float)):
            return float(value), f"appliance.web.worklist.{name}"
    for name in ("POLL_MS", "POLL_INTERVAL_MS", "REFRESH_MS", "REFRESH_INTERVAL_MS"):
        value = getattr(worklist, name, None)
        if isinstance(value, (int, float)):
            return float(value) / 1000, f"appliance.web.worklist.{name}"
    from_script = _script_interval_ms(WORKLIST_JS)
    if from_script is not None:
        return from_script / 1000, "appliance/web/static/worklist.js"
    return DEFAULT_POLL_S, "assumed: neither the worklist module nor worklist.js says"


def _script_interval_ms(path: Path) -> float | None:
    """A `POLL...MS = N` / `REFRESH...MS = N` constant, or setInterval(..., N), in the script."""
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    for pattern in (
        r"\b(?:POLL|REFRESH)\w*_MS\s*=\s*([0-9][0-9_]*)",
        r"setInterval\([^;]*?,\s*([0-9][0-9_]*)\s*\)",
    ):
        match = re.search(pattern, text)
        if match:
            return float(match.group(1).replace("_", ""))
    return None


@dataclass
class Poller:
    """One open worklist as worklist.js keeps it: ask with the version shown (a 304 while
    nothing changed), wait `interval_s` after each answer, ask again; note when each awaited
    marker first shows in an answer. Without the JSON endpoint, the page itself is asked."""

    session: Session
    endpoint: str
    interval_s: float
    awaited: dict[str, float] = field(default_factory=dict)  # marker -> when first seen
    lock: threading.Condition = field(default_factory=threading.Condition)
    stopping: bool = False
    version: str = ""

    def run(self) -> None:
        while not self.stopping:
            status, body = self.session.get(self._url())
            received = time.time()
            if status == 200:
                self._note(self._text(body), received)
            time.sleep(self.interval_s)  # the page's own pace, as its timer

    def _url(self) -> str:
        if self.endpoint != API:
            return self.endpoint
        return f"{API}?{urlencode({'tzo': '0', 'v': self.version})}"

    def _text(self, body: bytes) -> str:
        text = body.decode("utf-8", errors="replace")
        if self.endpoint == API:
            self.version = str(json.loads(text).get("version", ""))
        return text

    def _note(self, text: str, received: float) -> None:
        with self.lock:
            for marker, seen in self.awaited.items():
                if not seen and marker in text:
                    self.awaited[marker] = received
            self.lock.notify_all()

    def expect(self, marker: str) -> None:
        with self.lock:
            self.awaited[marker] = 0.0

    def wait_seen(self, marker: str, timeout_s: float) -> float | None:
        with self.lock:
            self.lock.wait_for(lambda: self.awaited[marker] > 0, timeout=timeout_s)
            return self.awaited[marker] or None


def _freshness(
    store: Store, port: int, name: str, studies: int, options: UIOptions, interval_s: float
) -> Freshness:
    session = Session.signed_in(port)
    endpoint = API if session.get(API)[0] == 200 else PAGE
    poller = Poller(session, endpoint, interval_s)
    thread = threading.Thread(target=poller.run, name="bench-poller", daemon=True)
    thread.start()
    progress(f"{name}: {options.images} new images, worklist polled every {interval_s:g} s")
    try:
        delays = _commit_and_watch(store, poller, options.images, interval_s)
    finally:
        poller.stopping = True
        thread.join(timeout=interval_s + HTTP_TIMEOUT_S)
        session.close()
    return Freshness(name, studies, endpoint, interval_s, options.images, tuple(delays))


def _commit_and_watch(store: Store, poller: Poller, images: int, interval_s: float) -> list[float]:
    token = uuid.uuid4().hex[:8]
    rng = random.Random(token)  # noqa: S311 (pacing, not secrets)
    wait_s = max(5.0, 3 * interval_s, 2 * FRESH_TARGET_MS / 1000)
    delays = []
    for number in range(images):
        marker = f"Pleural effusion 0.9{number % 10} bench{token}n{number}"
        job, owner = _ingest_small_image(store, token, number)
        poller.expect(marker)
        time.sleep(rng.uniform(0, interval_s))  # pacing: commits fall anywhere in the cycle
        committed = _complete_like_the_worker(store, job, owner, marker)
        seen = poller.wait_seen(marker, wait_s)
        if seen is not None:
            delays.append((seen - committed) * 1000)
    return delays


def _ingest_small_image(store: Store, token: str, number: int) -> tuple[jobs.Job, str]:
    """A 64x64 chest CR through the one way in (Store.ingest), and its job leased as the
    worker leases one (jobs.claim would take the seeded store's older queued jobs first)."""
    from appliance.imaging.header import read_header
    from appliance.samples import make_dataset

    ds = make_dataset(
        "cr",
        seed=number,
        rows=64,
        columns=64,
        patient_id=f"NEW{token}{number:03d}",
        study_key=f"bench-ui-{token}-{number}",
    )
    tmp = store.spool.new_tmp_path()
    ds.save_as(tmp, enforce_file_format=True)
    result = store.ingest(tmp, read_header(tmp), Origin(Source.IMPORT, user="bench"))
    if result.job_id is None:
        raise BenchError(f"image {number} was not queued ({result.outcome.value})")
    owner = jobs.owner_name()
    store.conn.execute(
        "UPDATE jobs SET state = 'running', attempts = 1, lease_owner = ?, lease_expires = ?,"
        " heartbeat_at = ?, updated_at = ? WHERE id = ?",
        (owner, time.time() + 600, utc_now(), utc_now(), result.job_id),
    )
    return jobs.Job(result.job_id, result.instance_id, jobs.ANALYSE, 1, 3), owner


def _complete_like_the_worker(store: Store, job: jobs.Job, owner: str, summary: str) -> float:
    """Commit an urgent finding for the job as the worker would; the time of the commit."""
    outcome = ModelOutcome(
        model="demo-chest-xray",
        version="0.1.0",
        model_sha256=CHEST_SHA,
        backend="onnxruntime-cpu",
        precision="int8",
        state=AnalysisState.FINDINGS,
        reason="",
        priority="urgent",
        summary=summary,
        key_frame=0,
        duration_ms=10.0,
        result=_result("demo-chest-xray", CHEST_SHA, [], []),
    )
    analysis = Analysis(AnalysisState.FINDINGS, "", "urgent", summary, (outcome,))
    if not store.complete(job, owner, analysis, "worker:bench"):
        raise BenchError(f"job {job.id} lost its lease")
    return time.time()


# --- the report -----------------------------------------------------------------------------


def format_report(report: UIReport) -> str:
    parts = [_header(report), _load_table(report), _target_lines(report), _fresh_table(report)]
    return "\n\n".join(parts) + "\n"


def _header(report: UIReport) -> str:
    o = report.options
    lines = [
        f"UI benchmark: `appliance ui` (waitress, {report.threads} threads, its own process) "
        f"serving {o.clients} client",
        f"threads in this process (keep-alive, each signed in with its own session), "
        f"{o.seconds:g} s per endpoint",
        f"and store; the {report.cores} CPU core(s) of this machine are shared by both.",
    ]
    for name, counts in report.stores.items():
        lines.append(f"  {name}: {_describe(counts)}")
    return "\n".join(lines)


def _describe(c: SeedCounts) -> str:
    if not c.studies:
        return "no studies"
    triage = ", ".join(f"{k} {v:,}" for k, v in sorted(c.triage.items()))
    states = ", ".join(f"{k} {v:,}" for k, v in sorted(c.states.items()))
    return (
        f"{c.studies:,} studies of {c.patients:,} patients, {c.images:,} images, "
        f"{c.findings:,} findings; triage: {triage}; images: {states}"
    )


def _load_table(report: UIReport) -> str:
    header = (
        "endpoint",
        "store",
        "requests",
        "errors",
        "req/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "KB/response",
    )
    rows: list[Sequence[str]] = [header]
    for x in report.load:
        rows.append(
            (
                x.endpoint,
                x.store,
                str(x.requests),
                str(x.errors),
                f"{x.per_s:.1f}",
                f"{x.p(50):.1f}",
                f"{x.p(95):.1f}",
                f"{x.p(99):.1f}",
                f"{x.mean_bytes / 1000:.1f}",
            )
        )
    return "Worklist under load:\n" + _table(rows)


def _target_lines(report: UIReport) -> str:
    lines = []
    for endpoint in (PAGE, API):
        empty, full = report.find(EMPTY, endpoint), report.find(report.full, endpoint)
        if empty is None or full is None:
            continue
        lines.append(
            f"  {endpoint}: {report.full} / empty: p50 x{full.p(50) / empty.p(50):.2f}, "
            f"p95 x{full.p(95) / empty.p(95):.2f}, req/s x{full.per_s / empty.per_s:.2f}"
        )
    if report.find(EMPTY, API) is None:
        lines.append(f"  {API}: not served by this UI (404): only the page was measured")
    lines.append(
        f"Target: worklist page p95 < {P95_TARGET_MS:.0f} ms with {report.full}: "
        f"{report.page_p95_ms:.1f} ms: {_verdict(report.page_met)}"
    )
    return "Full store beside the empty one:\n" + "\n".join(lines)


def _fresh_table(report: UIReport) -> str:
    rows: list[Sequence[str]] = [
        (
            "store",
            "endpoint",
            "images",
            "seen",
            "p50 ms",
            "p95 ms",
            "max ms",
            f"target <= {FRESH_TARGET_MS:.0f} ms",
        )
    ]
    for f in report.freshness:
        figures = [f.p(50), f.p(95), max(f.delays_ms)] if f.delays_ms else []
        shown = [f"{value:.0f}" for value in figures] or ["-"] * 3
        rows.append((f.store, f.endpoint, str(f.images), str(f.seen), *shown, _verdict(f.met)))
    title = (
        "Freshness: a new image's findings on an open worklist, from the commit (Store.complete,"
        "\nas the worker does) to the first poll response that shows them; polled every "
        f"{report.poll_interval_s:g} s\n({report.poll_source}):"
    )
    note = (
        "  seen: shown within the wait; an image never shown counts against the target (on the\n"
        "  page as it opens, unfiltered: a new study below the rows it lists is not seen)."
    )
    return "\n".join([title, _table(rows), note])


def _verdict(met: bool) -> str:
    return "MET" if met else "NOT MET"


@contextmanager
def _workdir(parent: Path | None) -> Iterator[Path]:
    """A new folder under `parent`, kept; or a temporary one, removed at the end."""
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix="ui-", dir=parent))
        progress(f"working in {path} (kept)")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="bench-ui-") as name:
        yield Path(name)


def progress(message: str) -> None:
    print(f"bench ui: {message}", file=sys.stderr, flush=True)
