"""Orthanc as the test PACS: it takes what is sent, answers over REST what it holds, and comes
back after a stop on the same ports with the same storage (the outage tests rely on that)."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pydicom
import pytest

from appliance.bench.harness.orthanc import Orthanc
from appliance.dicomout.scu import AssociationError, Peer, echo, send
from appliance.samples import write_sample


def test_orthanc_keeps_what_it_was_sent_across_a_restart(orthanc: Orthanc, tmp_path: Path) -> None:
    peer = Peer("127.0.0.1", orthanc.dicom_port, orthanc.ae_title, "TESTER")
    files = [write_sample(tmp_path / f"{i}.dcm", "cr", seed=i, rows=16, columns=16) for i in (1, 2)]
    uids = [str(pydicom.dcmread(f).SOPInstanceUID) for f in files]
    assert [r.status for r in send(files, peer)] == [0, 0]
    assert sorted(orthanc.instance_uids()) == sorted(uids)
    assert orthanc.count_instances() == 2
    assert pydicom.dcmread(BytesIO(orthanc.instance_file(uids[0]))).SOPInstanceUID == uids[0]
    with pytest.raises(KeyError):
        orthanc.instance_file("1.2.3.4")
    ports = (orthanc.dicom_port, orthanc.http_port)
    orthanc.stop()
    with pytest.raises(AssociationError) as refused:
        echo(peer)
    assert refused.value.unreachable.startswith("connection refused")
    orthanc.start()
    assert (orthanc.dicom_port, orthanc.http_port) == ports
    assert sorted(orthanc.instance_uids()) == sorted(uids)
    assert echo(peer) == 0


def test_orthanc_checks_the_called_ae_title(orthanc: Orthanc) -> None:
    with pytest.raises(AssociationError) as rejected:
        echo(Peer("127.0.0.1", orthanc.dicom_port, "NOT-ORTHANC", "TESTER"))
    assert rejected.value.rejection is not None
    assert rejected.value.rejection.diagnostic == 7  # called AE title not recognised
