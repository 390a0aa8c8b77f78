"""Why a series was not measured: one vocabulary for triage (headers), the loader (pixels),
series assembly and the method.

A job stores the code (`reason`, with a detail after a colon where one helps:
`not_sagittal:axial`, `not_lumbar:head`, `malformed_file:InvalidDicomError`) and a sentence
for people (`error`). Whether the job ends `skipped` (the series is not for the method:
nothing is wrong with the node or the files) or `failed` (files that should have been
usable, or the method itself) is the reason's, decided here once.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    # not for the method: the job is skipped
    NOT_AN_MR_IMAGE = ("not_an_mr_image", "not an MR image (another SOP class)", True)
    NOT_MR = ("not_mr", "not an MR series", True)
    NO_ORIENTATION = ("no_orientation", "no image orientation in the headers", True)
    NOT_SAGITTAL = ("not_sagittal", "not a sagittal series", True)
    TOO_OBLIQUE = ("too_oblique", "sagittal, but more oblique than MAX_OBLIQUITY_DEG", True)
    NOT_LUMBAR = ("not_lumbar", "not a lumbar spine series (body part and descriptions)", True)
    SINGLE_SLICE = ("single_slice", "a single slice, not a volume", True)
    MIXED_SERIES = ("mixed_series", "instances of several series in one", True)
    MIXED_GEOMETRY = ("mixed_geometry", "images of different sizes or orientations in one series", True)
    DUPLICATE_SLICE_POSITIONS = ("duplicate_slice_positions",
                                 "two images at one position (several echoes or phases in one series)", True)
    MISSING_GEOMETRY = ("missing_geometry", "no position or pixel spacing in the headers", True)
    UNSUPPORTED_IMAGE = ("unsupported_image", "not an MR magnitude image the method can read (colour, bit depth)",
                         True)
    INCOMPLETE_SERIES = ("incomplete_series", "the series looks incomplete", True)
    # should have been usable, or the method itself: the job failed
    NO_DICOM_FILES = ("no_dicom_files", "no DICOM files", False)
    MALFORMED_FILE = ("malformed_file", "a file is not readable DICOM", False)
    MISSING_PIXEL_DATA = ("missing_pixel_data", "an image without pixel data", False)
    UNSUPPORTED_TRANSFER_SYNTAX = ("unsupported_transfer_syntax", "pixels in a transfer syntax the node cannot decode",
                                   False)
    PIXEL_DATA_ERROR = ("pixel_data_error", "pixel data that did not decode", False)
    UNREADABLE_IMAGE = ("unreadable_image", "not a readable image file", False)
    NO_SPINE_FOUND = ("no_spine_found", "no spine found: no vertebral body was identified", False)
    METHOD_ERROR = ("method_error", "the method failed (the error says how)", False)
    REFUSED = ("refused", "the series cannot be used", False)

    def __new__(cls, code: str, sentence: str, skips: bool):
        member = str.__new__(cls, code)
        member._value_ = code
        member.sentence = sentence
        member.skips = skips  # True: the job is `skipped`, else `failed`
        return member

    def coded(self, detail: str | None = None) -> str:
        """The stored code: `not_sagittal`, or with a detail `not_sagittal:axial`."""
        return f"{self.value}:{detail}" if detail else self.value


def parse(code: str) -> tuple[Reason, str | None]:
    """A stored code back to its reason and detail; unknown codes raise ValueError."""
    name, _, detail = code.partition(":")
    return Reason(name), detail or None


def sentence(code: str) -> str:
    """For people: `not a sagittal series (axial)`."""
    reason, detail = parse(code)
    return f"{reason.sentence} ({detail})" if detail else reason.sentence
