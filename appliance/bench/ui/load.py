"""The worklist under load: signed-in clients asking one endpoint back to back."""

from __future__ import annotations

from collections.abc import Sequence

from appliance.bench.harness.http import Session, ask_together
from appliance.bench.ui.results import Load


def load(
    sessions: Sequence[Session],
    endpoint: str,
    seconds: float,
    store: str,
    studies: int,
    label: str = "",
) -> Load:
    """Every session asks for `endpoint` back to back for `seconds`, all starting together;
    the result is named `label` (the endpoint itself by default). A 304 (nothing changed since
    the version asked with) is an answer like a 200."""
    results = ask_together([(s, endpoint) for s in sessions], seconds, accepted=(200, 304))
    latencies = [ms for result in results for ms in result.latencies_ms]
    errors = sum(result.errors for result in results)
    total_bytes = sum(result.size for result in results)
    mean = total_bytes / len(latencies) if latencies else 0.0
    name = label or endpoint
    return Load(store, studies, name, len(sessions), seconds, tuple(latencies), errors, mean)
