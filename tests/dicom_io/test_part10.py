"""dicom_io/part10.py against the libraries it stands in for: the file meta byte for byte
pynetdicom's, the leading UIDs those of pydicom's full parse, on the project's MR files in
every uncompressed transfer syntax and on a header with sequences of undefined length before
the UIDs."""

from __future__ import annotations

from io import BytesIO

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)
from pynetdicom.dsutils import create_file_meta, encode_file_meta

from dicom_io.part10 import PREAMBLE, file_meta, leading_uids
from tests.helpers.dicom_files import write_series

SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)


def encoded(ds: Dataset, syntax) -> bytes:
    """The dataset's bytes in `syntax`, as a sender puts them in its C-STORE."""
    ds = ds.copy()
    if syntax == ExplicitVRBigEndian:
        ds.pop("PixelData", None)  # 16-bit pixels would need swapping; the UIDs are the point
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = syntax.is_little_endian, syntax.is_implicit_VR
    write_dataset(fp, ds)
    return fp.getvalue()


@pytest.mark.parametrize("syntax", [*SYNTAXES, JPEG2000Lossless])
@pytest.mark.parametrize("sop_uid", ["1.2.3.4", "1.2.3.45", generate_uid()])  # even, odd, 2.25-style length
def test_the_file_meta_is_pynetdicoms_byte_for_byte(syntax, sop_uid):
    mr = "1.2.840.10008.5.1.4.1.1.4"
    expected = PREAMBLE + encode_file_meta(create_file_meta(sop_class_uid=mr, sop_instance_uid=sop_uid,
                                                            transfer_syntax=syntax))
    assert file_meta(mr, sop_uid, syntax) == expected


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_the_leading_uids_are_those_of_a_full_parse(tmp_path, syntax):
    for path in write_series(tmp_path, "part10", slices=3):
        ds = pydicom.dcmread(path)
        raw = encoded(ds, syntax)
        full = pydicom.filereader.read_dataset(BytesIO(raw), syntax.is_implicit_VR, syntax.is_little_endian)
        assert leading_uids(raw, syntax) == (full.StudyInstanceUID, full.SeriesInstanceUID, full.SOPInstanceUID)
        assert leading_uids(raw, syntax)[1] == ds.SeriesInstanceUID
        # and the file a listener writes is one pydicom reads whole
        part10 = file_meta(ds.SOPClassUID, ds.SOPInstanceUID, syntax) + raw
        again = pydicom.dcmread(BytesIO(part10))
        assert again.file_meta.TransferSyntaxUID == syntax and again.SOPInstanceUID == ds.SOPInstanceUID


@pytest.mark.parametrize("undefined", [True, False])
@pytest.mark.parametrize("syntax", SYNTAXES)
def test_sequences_before_the_uids_are_stepped_over(syntax, undefined):
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.4", generate_uid()
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = ds.SOPClassUID, generate_uid()
    nested = Dataset()
    nested.CodeValue, nested.CodingSchemeDesignator, nested.CodeMeaning = "T-11503", "SRT", "Lumbar spine"
    item.PurposeOfReferenceCodeSequence = Sequence([nested])
    ds.ReferencedImageSequence = Sequence([item, item.copy()])  # (0008,1140), before group 0020
    for element in (ds["ReferencedImageSequence"], item["PurposeOfReferenceCodeSequence"]):
        element.is_undefined_length = undefined
    for each in (*ds.ReferencedImageSequence, nested):
        each.is_undefined_length_sequence_item = undefined
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.InstanceNumber = 1
    raw = encoded(ds, syntax)
    assert (b"\xff\xff\xff\xff" in raw) == undefined
    assert leading_uids(raw, syntax) == (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)


def test_a_deflated_dataset_is_left_to_the_full_decoder():
    assert leading_uids(b"\x78\x9c", DeflatedExplicitVRLittleEndian) is None


def test_missing_uids_are_none_not_invented():
    ds = Dataset()
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName = "Anonymous"
    assert leading_uids(encoded(ds, ExplicitVRLittleEndian), ExplicitVRLittleEndian) == (None, None, ds.SOPInstanceUID)
