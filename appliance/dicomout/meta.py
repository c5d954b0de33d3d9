"""File meta information (PS3.10 7.1) for the objects the box writes as Part 10 files."""

from __future__ import annotations

from pydicom.dataset import Dataset, FileMetaDataset, validate_file_meta
from pydicom.uid import UID, ExplicitVRLittleEndian


def file_meta_for(ds: Dataset, transfer_syntax: UID = ExplicitVRLittleEndian) -> FileMetaDataset:
    """File meta for `ds`, complete as PS3.10 asks: pydicom's validation adds the version and
    the implementation's UID and name, and refuses a dataset without its SOP class or instance.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    validate_file_meta(meta, enforce_standard=True)
    return meta
