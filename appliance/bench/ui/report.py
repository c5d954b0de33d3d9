"""The UI benchmark's printed report."""

from __future__ import annotations

from collections.abc import Sequence

from appliance.bench.harness.tables import table, verdict
from appliance.bench.ui.results import (
    API,
    EMPTY,
    FRESH_TARGET_MS,
    P95_TARGET_MS,
    PAGE,
    SeedCounts,
    UIReport,
)


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
    return "Worklist under load:\n" + table(rows)


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
        f"{report.page_p95_ms:.1f} ms: {verdict(report.page_met)}"
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
        rows.append((f.store, f.endpoint, str(f.images), str(f.seen), *shown, verdict(f.met)))
    title = (
        "Freshness: a new image's findings on an open worklist, from the commit (Store.complete,"
        "\nas the worker does) to the first poll response that shows them; polled every "
        f"{report.poll_interval_s:g} s\n({report.poll_source}):"
    )
    note = (
        "  seen: shown within the wait; an image never shown counts against the target (on the\n"
        "  page as it opens, unfiltered: a new study below the rows it lists is not seen)."
    )
    return "\n".join([title, table(rows), note])
