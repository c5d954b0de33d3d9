"""The receiver role: DICOM C-ECHO and C-STORE into the store."""

from appliance.receiver.scp import Receiver

__all__ = ["Receiver"]
