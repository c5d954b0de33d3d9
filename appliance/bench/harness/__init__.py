"""What every benchmark shares, so that each bench module keeps only its own measurement.

- `command`: the sub-command's parser, the work folder, the printed and JSON reports, progress.
- `options`: command-line options from one table of the options dataclass's fields.
- `tables`: result tables, percentiles and verdicts.
- `processes`: child processes (the checkout's environment, free ports, waiting, memory).
- `roles`: `appliance run` and `appliance ui` started for a run, on their own configuration.
- `http` and `dicom`: the clients (a signed-in browser-like session, a pynetdicom SCU).
"""

from __future__ import annotations

from appliance.errors import ApplianceError


class BenchError(ApplianceError):
    """A benchmark run went wrong (a peer did not start, a file did not arrive...)."""
