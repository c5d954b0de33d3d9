"""The box's generated UIDs and file meta: deterministic from the inputs, valid, under one root."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
)

from appliance.dicomout.meta import file_meta_for
from appliance.dicomout.uids import UID_ROOT, deterministic_uid


def test_the_same_parts_give_the_same_valid_uid_under_the_root() -> None:
    uid = deterministic_uid("import-study", "SYN1", 3, 1.5)
    assert uid == deterministic_uid("import-study", "SYN1", 3, 1.5)
    assert uid.startswith(UID_ROOT) and uid.is_valid and len(uid) <= 64


def test_parts_are_kept_apart() -> None:
    """generate_uid joins its sources without a separator; ours must not collide."""
    assert deterministic_uid("ab", "c") != deterministic_uid("a", "bc")
    assert deterministic_uid("a", "") != deterministic_uid("a")


def test_file_meta_is_complete() -> None:
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = deterministic_uid("meta")
    meta = file_meta_for(ds)
    assert meta.MediaStorageSOPClassUID == SecondaryCaptureImageStorage
    assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert meta.ImplementationClassUID == PYDICOM_IMPLEMENTATION_UID
    assert meta.FileMetaInformationVersion == b"\x00\x01"


def test_file_meta_refuses_a_dataset_without_its_instance() -> None:
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ""
    with pytest.raises(AttributeError, match="Media Storage SOP Instance UID"):
        file_meta_for(ds)
