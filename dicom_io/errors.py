"""Why a series cannot be used: one exception class per reason.

Each class carries its `reason` (dicom_io/reasons.py: the one vocabulary, stored with the
job and printed by `lumbarnode inspect`) and a message for people. Messages name UIDs and file names only,
never patient data.
"""

from __future__ import annotations

from dicom_io.reasons import Reason


class SeriesRefused(ValueError):
    """The series (or file) cannot be used by the method; `reason` says why in one word."""

    reason = Reason.REFUSED


class NoDicomFilesError(SeriesRefused):
    reason = Reason.NO_DICOM_FILES


class MalformedFileError(SeriesRefused):
    reason = Reason.MALFORMED_FILE


class NotMRError(SeriesRefused):
    reason = Reason.NOT_MR


class MixedSeriesError(SeriesRefused):
    reason = Reason.MIXED_SERIES


class MissingPixelDataError(SeriesRefused):
    reason = Reason.MISSING_PIXEL_DATA


class MissingGeometryError(SeriesRefused):
    reason = Reason.MISSING_GEOMETRY


class UnsupportedImageError(SeriesRefused):
    """Colour images, unusual bit depths: not an MR magnitude image the method can read."""

    reason = Reason.UNSUPPORTED_IMAGE


class UnsupportedTransferSyntaxError(SeriesRefused):
    reason = Reason.UNSUPPORTED_TRANSFER_SYNTAX


class PixelDataError(SeriesRefused):
    """The transfer syntax is supported but these pixel data did not decode."""

    reason = Reason.PIXEL_DATA_ERROR


class NotSagittalError(SeriesRefused):
    reason = Reason.NOT_SAGITTAL


class MixedGeometryError(SeriesRefused):
    reason = Reason.MIXED_GEOMETRY


class DuplicateSlicePositionError(SeriesRefused):
    """Two images at one position: several echoes, phases or repeats stored as one series."""

    reason = Reason.DUPLICATE_SLICE_POSITIONS


class SingleSliceError(SeriesRefused):
    reason = Reason.SINGLE_SLICE
