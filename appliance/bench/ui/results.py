"""What the UI benchmark measures: its options, the load on each endpoint, how soon a new
finding shows, and the whole report's figures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.bench.harness.command import report_json
from appliance.bench.harness.options import check_options
from appliance.bench.harness.tables import percentile
from appliance.store.benchmarks import Contents

P95_TARGET_MS = 200.0  # the worklist page with the full store
FRESH_TARGET_MS = 2000.0  # commit -> the finding shows on an open worklist
PAGE = "/"
API = "/api/worklist"
UNCHANGED = "/api/worklist?v=(current)"  # as an open worklist asks while nothing changed
EMPTY = "empty"
SeedCounts = Contents  # what a seeded store holds, counted back from it


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
        check_options(
            (
                min(self.studies, self.clients, self.images) >= 1,
                "--studies, --clients and --images must be at least 1",
            ),
            (self.seconds > 0, "--seconds must be positive"),
        )


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
        data = report_json(self)
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
