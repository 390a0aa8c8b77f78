"""A STOW-RS store request, read (PS3.18 section 10.5): the body of
`multipart/related; type="application/dicom"` split into its DICOM parts by python-multipart's
streaming parser, and the store response (Referenced and Failed SOP Sequences) as DICOM JSON.
No HTTP framework, no database here: worker/stow_server.py serves it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from io import BytesIO

import pydicom
from python_multipart.multipart import MultipartParser

STOW_MEDIA_TYPE = "application/dicom"


class BadRequest(ValueError):
    """Not a STOW-RS request we can read: the sentence goes back with 400 or 415."""

    def __init__(self, message: str, status_code: int = 400):
        super().__init__(message)
        self.status_code = status_code


def boundary_of(content_type: str) -> bytes:
    """The boundary of `multipart/related; type="application/dicom"`; BadRequest (415) for
    any other media type (PS3.18 accepts application/dicom+xml and +json with bulk data too:
    not here)."""
    header = Message()
    header["content-type"] = content_type
    if header.get_content_type() != "multipart/related":
        raise BadRequest(f"expected multipart/related; type=\"{STOW_MEDIA_TYPE}\", not {content_type!r}", 415)
    part_type = (header.get_param("type") or STOW_MEDIA_TYPE).strip('"').lower()
    if part_type != STOW_MEDIA_TYPE:
        raise BadRequest(f"parts of type {part_type!r} are not accepted: only {STOW_MEDIA_TYPE}", 415)
    boundary = header.get_param("boundary")
    if not boundary:
        raise BadRequest("the multipart/related content type has no boundary")
    return str(boundary).encode()


@dataclass
class _Parts:
    """Collects the parts as the parser calls back: (content type, bytes) each."""

    done: list[tuple[str, bytes]] = field(default_factory=list)
    _headers: dict[str, str] = field(default_factory=dict)
    _field: bytearray = field(default_factory=bytearray)
    _value: bytearray = field(default_factory=bytearray)
    _data: bytearray = field(default_factory=bytearray)

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda data, start, end: self._field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_part_data": lambda data, start, end: self._data.extend(data[start:end]),
            "on_part_end": self._end,
        }

    def _begin(self) -> None:
        self._headers, self._data = {}, bytearray()

    def _header_end(self) -> None:
        self._headers[self._field.decode("latin-1").strip().lower()] = self._value.decode("latin-1").strip()
        self._field, self._value = bytearray(), bytearray()

    def _end(self) -> None:
        kind = self._headers.get("content-type", STOW_MEDIA_TYPE).split(";")[0].strip().lower()
        self.done.append((kind, bytes(self._data)))


class PartReader:
    """Feed the body's chunks; take the parts as they complete (one part in memory at a time)."""

    def __init__(self, content_type: str, max_bytes: int):
        self._parts = _Parts()
        self._parser = MultipartParser(boundary_of(content_type), self._parts.callbacks(), max_size=max_bytes)
        self._seen = 0
        self.max_bytes = max_bytes

    def feed(self, chunk: bytes) -> Iterator[tuple[str, bytes]]:
        self._seen += len(chunk)
        if self._seen > self.max_bytes:
            raise BadRequest(f"the request is larger than {self.max_bytes >> 20} MiB", 413)
        try:
            self._parser.write(chunk)
        except Exception as exc:  # python-multipart's own errors for a malformed body
            raise BadRequest(f"the multipart body could not be read ({type(exc).__name__})") from None
        done, self._parts.done = self._parts.done, []
        yield from done

    def finish(self) -> Iterator[tuple[str, bytes]]:
        self._parser.finalize()
        done, self._parts.done = self._parts.done, []
        yield from done


@dataclass(frozen=True)
class PartHeader:
    """What the node needs of a part before it is stored."""

    sop_class_uid: str
    uids: tuple  # study, series, instance (None where missing)


def read_part(data: bytes) -> PartHeader:
    """A Part 10 file's SOP class and UIDs; ValueError when it is not one."""
    ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True, force=False)
    sop_class = str(ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID") or "")
    return PartHeader(sop_class, (ds.get("StudyInstanceUID"), ds.get("SeriesInstanceUID"), ds.get("SOPInstanceUID")))


@dataclass
class StoreResponse:
    """PS3.18 table 10.5.3-3: what was stored, what was refused and why."""

    stored: list[tuple[str, str]] = field(default_factory=list)  # SOP class, instance
    failed: list[tuple[str, str, int]] = field(default_factory=list)  # SOP class, instance, Failure Reason

    @property
    def status_code(self) -> int:
        """200 all stored; 202 some refused; 409 none stored (PS3.18 10.5.3)."""
        if not self.failed:
            return 200
        return 202 if self.stored else 409

    def as_json(self) -> dict:
        ds = pydicom.Dataset()
        if self.stored:
            ds.ReferencedSOPSequence = [_item(sop_class, uid) for sop_class, uid in self.stored]
        if self.failed:
            items = []
            for sop_class, uid, reason in self.failed:
                item = _item(sop_class, uid)
                item.FailureReason = reason
                items.append(item)
            ds.FailedSOPSequence = items
        return ds.to_json_dict()


def _item(sop_class: str, uid: str) -> pydicom.Dataset:
    item = pydicom.Dataset()
    if sop_class:
        item.ReferencedSOPClassUID = sop_class
    if uid:
        item.ReferencedSOPInstanceUID = uid
    return item
