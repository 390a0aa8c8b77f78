"""Why a series cannot be used: one exception class per reason.

Each class carries a short, stable `reason` code (stored with skipped jobs and printed by
`lumbarnode inspect`) and a message for people. Messages name UIDs and file names only,
never patient data.
"""

from __future__ import annotations


class SeriesRefused(ValueError):
    """The series (or file) cannot be used by the method; `reason` says why in one word."""

    reason = "refused"


class NoDicomFilesError(SeriesRefused):
    reason = "no_dicom_files"


class MalformedFileError(SeriesRefused):
    reason = "malformed_file"


class NotMRError(SeriesRefused):
    reason = "not_mr"


class MixedSeriesError(SeriesRefused):
    reason = "mixed_series"


class MissingPixelDataError(SeriesRefused):
    reason = "missing_pixel_data"


class MissingGeometryError(SeriesRefused):
    reason = "missing_geometry"


class UnsupportedImageError(SeriesRefused):
    """Colour images, unusual bit depths: not an MR magnitude image the method can read."""

    reason = "unsupported_image"


class UnsupportedTransferSyntaxError(SeriesRefused):
    reason = "unsupported_transfer_syntax"


class PixelDataError(SeriesRefused):
    """The transfer syntax is supported but these pixel data did not decode."""

    reason = "pixel_data_error"


class NotSagittalError(SeriesRefused):
    reason = "not_sagittal"


class MixedGeometryError(SeriesRefused):
    reason = "mixed_geometry"


class DuplicateSlicePositionError(SeriesRefused):
    """Two images at one position: several echoes, phases or repeats stored as one series."""

    reason = "duplicate_slice_positions"


class SingleSliceError(SeriesRefused):
    reason = "single_slice"
