"""A receiver's resident memory, read from /proc while it takes in one big object."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from appliance.bench.harness.processes import status_mb

SAMPLE_INTERVAL_S = 0.005


@dataclass(frozen=True)
class MemoryResult:
    """Resident memory of one receiver around one transfer, in MB (10^6 bytes)."""

    receiver: str
    object_mb: float
    before_mb: float  # VmRSS just before the transfer
    sampled_peak_mb: float  # the largest VmRSS seen while sampling
    hwm_mb: float  # VmHWM at the end: the peak since the process started
    seconds: float

    @property
    def peak_mb(self) -> float:
        return max(self.sampled_peak_mb, self.hwm_mb)


class RssSampler:
    """Samples a process's VmRSS on a thread between `start()` and `stop()`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)
        self._error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> float:
        """Stop sampling; the peak VmRSS seen, in MB. Re-raises what broke the sampler."""
        self._stop.set()
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.peak_mb

    def _run(self) -> None:
        try:
            while True:
                self.peak_mb = max(self.peak_mb, status_mb(self.pid, "VmRSS"))
                if self._stop.wait(SAMPLE_INTERVAL_S):
                    return
        except BaseException as exc:  # handed to the caller by stop()
            self._error = exc
