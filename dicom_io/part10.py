"""An instance as received, made a Part 10 file without decoding it.

For every C-STORE the listener needs the file meta information around the dataset's bytes
and the three UIDs of its spool path. pydicom's way parses every element of the dataset and
builds and validates a FileMetaDataset; a profile of a listener put the two at about a fifth
of its time holding the GIL. Here the file meta is encoded directly (byte for byte what
pynetdicom's `Event.encoded_dataset` writes) and the dataset is parsed only as far as the
Series Instance UID, by pydicom's own reader (sequences of undefined length included).
"""

from __future__ import annotations

import struct
from io import BytesIO

from pydicom.filereader import read_dataset
from pydicom.tag import Tag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

PREAMBLE = b"\x00" * 128 + b"DICM"
_SERIES_INSTANCE_UID = Tag(0x0020, 0x000E)  # the last of the three in tag order


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes:
    """Preamble, prefix and group 0002 (Explicit VR Little Endian), as pynetdicom writes them."""
    elements = b"".join((
        _element(0x0001, b"OB", b"\x00\x01"),
        _element(0x0002, b"UI", _padded(sop_class_uid, b"\x00")),
        _element(0x0003, b"UI", _padded(sop_instance_uid, b"\x00")),
        _element(0x0010, b"UI", _padded(transfer_syntax_uid, b"\x00")),
        _element(0x0012, b"UI", _padded(PYNETDICOM_IMPLEMENTATION_UID, b"\x00")),
        _element(0x0013, b"SH", _padded(PYNETDICOM_IMPLEMENTATION_VERSION, b" ")),
    ))
    return PREAMBLE + _element(0x0000, b"UL", struct.pack("<I", len(elements))) + elements


def leading_uids(dataset: bytes, transfer_syntax_uid: str) -> tuple[str | None, str | None, str | None] | None:
    """Study, Series and SOP Instance UID from the dataset's first elements; None where this
    transfer syntax needs the whole dataset decoded (deflated), for the caller to do so."""
    syntax = UID(transfer_syntax_uid)
    if syntax == DeflatedExplicitVRLittleEndian or not syntax.is_transfer_syntax:
        return None
    head = read_dataset(BytesIO(dataset), syntax.is_implicit_VR, syntax.is_little_endian,
                        stop_when=lambda tag, vr, length: tag > _SERIES_INSTANCE_UID)
    return head.get("StudyInstanceUID"), head.get("SeriesInstanceUID"), head.get("SOPInstanceUID")


def _padded(text: str, pad: bytes) -> bytes:
    value = text.encode("ascii")
    return value + pad if len(value) % 2 else value


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":  # the long form: two reserved bytes, a 4-byte length
        return struct.pack("<HH2s2xI", 0x0002, element, vr, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value
