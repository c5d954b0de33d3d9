"""Sending DICOM: the SCU used by `appliance send`/`echo` (and later the sender role)."""
