"""The end-to-end benchmark's printed report."""

from __future__ import annotations

import statistics
from collections.abc import Iterator, Sequence

from appliance.bench.e2e.results import (
    COLD_START_TARGET_S,
    MEMORY_TARGET_MB,
    RATIO_TARGET,
    ColdStart,
    E2EReport,
    FileTiming,
    JobCounts,
    Scenario,
    sum_hwm,
    sum_rss,
)
from appliance.bench.harness.roles import RoleMemory
from appliance.bench.harness.tables import table, verdict


def format_report(report: E2EReport) -> str:
    parts = [
        _header(report),
        _latency_table(report.scenarios),
        _split_table(report.scenarios),
        _jobs_lines(report.scenarios, report.options.drain_timeout_s),
        _files_table(report.files),
        _memory_table(report.memory),
        _cold_start_lines(report.cold_start),
    ]
    return "\n\n".join(parts) + "\n"


def _header(report: E2EReport) -> str:
    lines = [
        "End-to-end benchmark: pynetdicom SCU -> `appliance run` (receiver + worker) on loopback",
        f"  worker models: {report.models}",
        "  e2e: the SCU's success response -> analyses.updated_at (written in the transaction",
        "    that commits the findings)",
        "  model-only: decode + Model.infer of the applicable models in this process, same",
        f"    settings; median of 3 x {report.options.repeat} runs per file, on the idle appliance",
        "  analyse(): the worker's analyse() on the same file, the same way (adds routing, the",
        "    plausibility check and what else it does inline)",
        "  claim->commit: the analysis job's lease (jobs.heartbeat_at) to analyses.updated_at",
        f"  images: the demo set, chest radiographs of {report.options.chest_rows} rows, fresh "
        "UIDs for every push",
    ]
    lines += [f"  left out: {text}" for text in report.left_out]
    return "\n".join(lines)


def _latency_table(scenarios: Sequence[Scenario]) -> str:
    header = (
        "scenario",
        "n",
        "e2e p50 ms",
        "e2e p95 ms",
        "model-only p50 ms",
        "ratio p50s",
        "median image ratio",
        "in-job p50 ms",
        "ratio",
        f"target <= {RATIO_TARGET:g}",
    )
    rows: list[Sequence[str]] = [header]
    for s in scenarios:
        if not s.images:
            rows.append((s.name, "0", *("-" * 7), "NOT MET"))
            continue
        rows.append(
            (
                s.name,
                str(len(s.images)),
                f"{s.p('e2e_ms', 50):.1f}",
                f"{s.p('e2e_ms', 95):.1f}",
                f"{s.p('model_ms', 50):.1f}",
                f"{s.ratio_of_p50s:.2f}",
                f"{s.median_image_ratio:.2f}",
                f"{s.p('in_job_ms', 50):.1f}",
                f"{s.in_job_ratio_of_p50s:.2f}",
                verdict(s.ratio_of_p50s <= RATIO_TARGET)
                + f" / {verdict(s.in_job_ratio_of_p50s <= RATIO_TARGET)}",
            )
        )
    title = f"Latency ({', '.join(f'{s.name}: {s.description}' for s in scenarios)}):"
    note = (
        "  model-only: this process, warm (repeated runs of each file); in-job: decode + the\n"
        "  models as the worker timed them inside each image's own job (same moment, same\n"
        "  caches), so e2e / in-job is the pipeline's own overhead: queue, check, store."
    )
    return "\n".join([title, table(rows), note])


def _split_table(scenarios: Sequence[Scenario]) -> str:
    """e2e = model-only + pipeline extras + the worker's storing + the wait in the queue."""
    title = (
        "Where the time goes (ms, medians over the images): e2e = model-only + extras\n"
        "[analyse() - model-only] + storing [claim->commit - analyse(): reading the row, the\n"
        "commit] + queue [response -> claim: the doorbell, earlier jobs]. follow-ups: the part\n"
        "of the queue the worker spent on earlier images' follow-up jobs (pictures). lag: the\n"
        "receiver's row -> the SCU had its response; the worker may start meanwhile, so a\n"
        "queue, or even an e2e, can be negative:"
    )
    header = ("scenario", "e2e", "model-only", "analyse()", "claim->commit", "extras")
    rows: list[Sequence[str]] = [(*header, "storing", "queue", "follow-ups", "lag")]
    for s in scenarios:
        if s.images:
            rows.append((s.name, *(f"{v:.1f}" for v in _split(s))))
    return title + "\n" + table(rows)


def _split(s: Scenario) -> list[float]:
    def median(values: Iterator[float]) -> float:
        return statistics.median(values)

    images = s.images
    return [
        *(s.p(name, 50) for name in ("e2e_ms", "model_ms", "analyse_ms", "worker_ms")),
        median(i.analyse_ms - i.model_ms for i in images),
        median(i.worker_ms - i.analyse_ms for i in images),
        median(i.queue_ms for i in images),
        median(i.behind_followups_ms for i in images),
        median(i.response_lag_ms for i in images),
    ]


def _jobs_lines(scenarios: Sequence[Scenario], timeout_s: float) -> str:
    """Whether every job ended, and how long after the last push."""
    lines = [
        f"Jobs (the store polled until every job of the pushed images ended, <= {timeout_s:g} s):"
    ]
    for s in scenarios:
        kinds = [("analyses", s.analyses), *((f"{k} jobs", c) for k, c in s.followups.items())]
        counts = "; ".join(_count_text(name, c) for name, c in kinds)
        states = ", ".join(f"{k} {v}" for k, v in sorted(s.states.items()))
        lines.append(
            f"  {s.name}: {s.pushed} pushed in {s.push_s:.1f} s ({s.pushed / s.push_s:.1f}/s); "
            f"{counts}; analyses: {states}"
        )
        lines.append(f"    after the last response: {_drain_text(s)}")
    return "\n".join(lines)


def _count_text(name: str, counts: JobCounts) -> str:
    each = "" if counts.p50_ms is None else f", lease->end p50 {counts.p50_ms:.1f} ms"
    return f"{name} done {counts.done}, failed {counts.failed}, stuck {counts.stuck}{each}"


def _drain_text(s: Scenario) -> str:
    analysed = "none" if s.last_analysis_s is None else f"{s.last_analysis_s:.2f} s"
    if s.drain_s is None:
        return f"last analysis {analysed}; JOBS STUCK at the timeout"
    return f"last analysis {analysed}, last job ended {s.drain_s:.2f} s: none lost or stuck"


def _files_table(files: Sequence[FileTiming]) -> str:
    rows: list[Sequence[str]] = [("file", "models", "model-only ms", "analyse() ms")]
    rows += [
        (f.kind, ",".join(f.models) or "-", f"{f.model_ms:.1f}", f"{f.analyse_ms:.1f}")
        for f in files
    ]
    return "Per demo file, in this process:\n" + table(rows)


def _memory_table(memory: Sequence[RoleMemory]) -> str:
    rows: list[Sequence[str]] = [("role", "pid", "VmHWM MB (peak)", "VmRSS MB (now)")]
    rows += [(m.role, str(m.pid), f"{m.hwm_mb:.1f}", f"{m.rss_mb:.1f}") for m in memory]
    peak, now = sum_hwm(memory), sum_rss(memory)
    rows.append(("receiver + worker", "", f"{peak:.1f}", f"{now:.1f}"))
    return (
        "Resident memory of `appliance run`'s roles after the burst (MB = 10^6 bytes; shared\n"
        "library pages count in each):\n"
        + table(rows)
        + f"\n  receiver + worker peak {peak:.0f} MB, target < {MEMORY_TARGET_MB:.0f} MB: "
        f"{verdict(peak < MEMORY_TARGET_MB)}; now {now:.0f} MB: {verdict(now < MEMORY_TARGET_MB)}"
    )


def _cold_start_lines(cold: ColdStart) -> str:
    if cold.backend.startswith("tensorrt"):
        engines = "TensorRT engines not yet cached are built during this start and counted in it"
    else:
        engines = (
            f"TensorRT engine builds do not apply (backend {cold.backend}: ONNX Runtime "
            "on the CPU); a Jetson's first start also builds its engines"
        )
    return "\n".join(
        [
            "Cold start of `appliance run` (from launch):",
            f"  first C-STORE accepted {cold.first_store_s:.2f} s; worker ready (models loaded and "
            f"warmed) {cold.worker_ready_s:.2f} s",
            f"  cold start (the later) {cold.seconds:.2f} s, target < {COLD_START_TARGET_S:.0f} s: "
            f"{verdict(cold.seconds < COLD_START_TARGET_S)}",
            f"  {engines}",
        ]
    )
