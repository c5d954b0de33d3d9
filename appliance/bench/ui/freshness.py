"""Freshness: how soon a new image's finding shows on an open worklist, from the commit (as
the worker commits) to the first poll response that shows it."""

from __future__ import annotations

import json
import random
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

from appliance.bench.harness import BenchError
from appliance.bench.harness.command import progress
from appliance.bench.harness.http import HTTP_TIMEOUT_S, Session
from appliance.bench.ui.results import API, FRESH_TARGET_MS, PAGE, Freshness, UIOptions
from appliance.bench.ui.seed import CHEST_SHA, finding_result
from appliance.domain import Analysis, AnalysisState, ModelOutcome, Origin, Source
from appliance.store import Store, jobs
from appliance.store.benchmarks import lease_job

WORKLIST_JS = Path(__file__).resolve().parents[2] / "web" / "static" / "worklist.js"
DEFAULT_POLL_S = 2.0  # only when neither the worklist module nor its script says
LEASE_S = 600.0


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


def freshness(
    store: Store, port: int, name: str, studies: int, options: UIOptions, interval_s: float
) -> Freshness:
    session = Session.signed_in(port)
    endpoint = API if session.get(API)[0] == 200 else PAGE
    poller = Poller(session, endpoint, interval_s)
    thread = threading.Thread(target=poller.run, name="bench-poller", daemon=True)
    thread.start()
    progress("ui", f"{name}: {options.images} new images, worklist polled every {interval_s:g} s")
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
    lease_job(store.conn, result.job_id, owner, LEASE_S)
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
        result=finding_result("demo-chest-xray", CHEST_SHA, [], []),
    )
    analysis = Analysis(AnalysisState.FINDINGS, "", "urgent", summary, (outcome,))
    if not store.complete(job, owner, analysis, "worker:bench"):
        raise BenchError(f"job {job.id} lost its lease")
    return time.time()
