"""Image-plane geometry in DICOM patient coordinates (LPS: +x left, +y posterior, +z superior).

The project works on sagittal slices in one *canonical* in-plane layout:
rows run superior -> inferior and columns run anterior -> posterior (the radiological
sagittal view, patient facing left). Source series may be stored transposed or mirrored;
`InPlaneFlip` records the 90-degree operations that map a source slice onto the canonical
one, so results can be mapped back onto the source pixels (SEG frames, SR coordinates).
Only transposes and flips are used, so pixel values are never resampled.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

# ImageOrientationPatient of a standard sagittal slice in the canonical layout:
# columns increase toward posterior (+y), rows increase toward inferior (-z).
SAGITTAL_IOP: tuple[float, ...] = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)

_AXIS_NAMES = ("sagittal", "coronal", "axial")  # plane whose normal is along x, y, z


def unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def plane_name(normal: np.ndarray) -> str:
    """'sagittal', 'coronal' or 'axial' by the dominant axis of the slice normal."""
    return _AXIS_NAMES[int(np.argmax(np.abs(normal)))]


def angle_to_axis_deg(normal: np.ndarray, axis: int) -> float:
    """Angle (0..90 degrees) between the slice normal and a patient axis (0=x, 1=y, 2=z)."""
    return float(np.degrees(np.arccos(min(1.0, abs(unit(normal)[axis])))))


@dataclass(frozen=True)
class PlaneGrid:
    """Where the pixel centres of one 2-D slice lie in patient space."""

    origin: np.ndarray  # centre of pixel (0, 0), mm (ImagePositionPatient)
    row_dir: np.ndarray  # direction of increasing column index (IOP[:3])
    col_dir: np.ndarray  # direction of increasing row index (IOP[3:])
    spacing: tuple[float, float]  # (between rows, between columns) mm = PixelSpacing
    shape: tuple[int, int]  # (rows, columns)

    @classmethod
    def from_dicom(cls, iop, ipp, pixel_spacing, rows: int, cols: int) -> PlaneGrid:
        iop = np.asarray(iop, dtype=np.float64)
        return cls(
            origin=np.asarray(ipp, dtype=np.float64),
            row_dir=unit(iop[:3]),
            col_dir=unit(iop[3:]),
            spacing=(float(pixel_spacing[0]), float(pixel_spacing[1])),
            shape=(int(rows), int(cols)),
        )

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_dir, self.col_dir)

    @property
    def orientation(self) -> tuple[float, ...]:
        return tuple(float(x) for x in (*self.row_dir, *self.col_dir))

    def to_patient(self, row: float, col: float) -> np.ndarray:
        """Patient coordinates (mm) of a (fractional) pixel position."""
        return self.origin + col * self.spacing[1] * self.row_dir + row * self.spacing[0] * self.col_dir

    def transposed(self) -> PlaneGrid:
        # a_t[i, j] = a[j, i]: new rows step along the old row_dir, with the old column spacing.
        return replace(self, row_dir=self.col_dir, col_dir=self.row_dir,
                       spacing=self.spacing[::-1], shape=self.shape[::-1])

    def flipped_rows(self) -> PlaneGrid:
        last = (self.shape[0] - 1) * self.spacing[0] * self.col_dir
        return replace(self, origin=self.origin + last, col_dir=-self.col_dir)

    def flipped_cols(self) -> PlaneGrid:
        last = (self.shape[1] - 1) * self.spacing[1] * self.row_dir
        return replace(self, origin=self.origin + last, row_dir=-self.row_dir)


@dataclass(frozen=True)
class InPlaneFlip:
    """Source slice -> canonical slice: transpose first, then flip rows, then flip columns."""

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    @classmethod
    def for_sagittal(cls, row_dir: np.ndarray, col_dir: np.ndarray) -> InPlaneFlip:
        """The operations that bring a sagittal slice to rows inferior-ward, columns posterior-ward."""
        transpose = abs(row_dir[2]) > abs(col_dir[2])  # columns run head-feet: swap axes
        if transpose:
            row_dir, col_dir = col_dir, row_dir
        return cls(transpose=bool(transpose), flip_rows=bool(col_dir[2] > 0), flip_cols=bool(row_dir[1] < 0))

    def to_canonical(self, a: np.ndarray) -> np.ndarray:
        """Apply to the last two axes of an array of source slices."""
        if self.transpose:
            a = np.swapaxes(a, -1, -2)
        if self.flip_rows:
            a = a[..., ::-1, :]
        if self.flip_cols:
            a = a[..., :, ::-1]
        return np.ascontiguousarray(a)

    def to_source(self, a: np.ndarray) -> np.ndarray:
        """Inverse of `to_canonical` (e.g. to write a canonical mask onto source pixels)."""
        if self.flip_cols:
            a = a[..., :, ::-1]
        if self.flip_rows:
            a = a[..., ::-1, :]
        if self.transpose:
            a = np.swapaxes(a, -1, -2)
        return np.ascontiguousarray(a)

    def grid_to_canonical(self, grid: PlaneGrid) -> PlaneGrid:
        if self.transpose:
            grid = grid.transposed()
        if self.flip_rows:
            grid = grid.flipped_rows()
        if self.flip_cols:
            grid = grid.flipped_cols()
        return grid

    def grid_to_source(self, grid: PlaneGrid) -> PlaneGrid:
        if self.flip_cols:
            grid = grid.flipped_cols()
        if self.flip_rows:
            grid = grid.flipped_rows()
        if self.transpose:
            grid = grid.transposed()
        return grid

    def point_to_source(self, row: float, col: float, canonical_shape: tuple[int, int]) -> tuple[float, float]:
        """A (row, col) position on the canonical slice, as (row, col) on the source slice."""
        if self.flip_cols:
            col = canonical_shape[1] - 1 - col
        if self.flip_rows:
            row = canonical_shape[0] - 1 - row
        if self.transpose:
            row, col = col, row
        return row, col
