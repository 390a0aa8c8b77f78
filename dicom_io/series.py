"""Load a sagittal MR series from DICOM files into one typed, canonical object.

`load_series` reads a folder (or a list of files), checks that the method can use what it
finds, and returns a `Series`:

- `pixels`: float32 (slices, rows, cols) in the canonical layout of `dicom_io.geometry`
  (rows superior -> inferior, columns anterior -> posterior), slices ordered from the
  patient's right to left. RescaleSlope/Intercept are applied; MONOCHROME1 is inverted so
  that higher always means brighter.
- geometry in patient millimetres (pixel spacing (row, col), slice positions, orientation),
- the UIDs needed to reference every slice later (SEG, SR), and the headers (without pixel
  data) of the source instances, from which the derived objects copy patient and study.

Whatever the method cannot use raises a `dicom_io.errors.SeriesRefused` subclass that
says why. Single-frame MR and Enhanced MR (multi-frame) are both read.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from dicom_io import errors
from dicom_io.geometry import InPlaneFlip, PlaneGrid, angle_to_axis_deg, plane_name

ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"

# Tolerances: orientations that differ by more than ~0.6 degrees are a different plane;
# positions closer than 0.01 mm are the same slice.
_ORIENTATION_TOLERANCE = 1e-2
_SAME_POSITION_MM = 1e-2
_REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


@dataclass(frozen=True)
class SliceRef:
    """What a derived object needs to reference one source slice."""

    sop_class_uid: str
    sop_instance_uid: str
    frame_number: int | None  # 1-based frame of a multi-frame instance; None for single-frame


@dataclass(frozen=True)
class Series:
    pixels: np.ndarray  # float32 (slices, rows, cols), canonical layout
    pixel_spacing_mm: tuple[float, float]  # (between rows, between columns) of `pixels`
    slice_positions_mm: np.ndarray  # (slices,) along +x (patient left), ascending
    slice_thickness_mm: float | None
    grids: tuple[PlaneGrid, ...]  # canonical grid of each slice in patient space
    in_plane: InPlaneFlip  # source slice -> canonical slice
    source_orientation: tuple[float, ...]  # ImageOrientationPatient as stored
    slices: tuple[SliceRef, ...]
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str | None
    modality: str
    series_description: str
    body_part_examined: str
    transfer_syntaxes: tuple[str, ...]
    warnings: tuple[str, ...] = ()
    headers: tuple[Dataset, ...] = ()  # source instances without Pixel Data, in slice order

    def header(self, sop_instance_uid: str) -> Dataset:
        for ds in self.headers:
            if ds.SOPInstanceUID == sop_instance_uid:
                return ds
        raise KeyError(sop_instance_uid)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.pixels.shape)  # type: ignore[return-value]

    @property
    def image_orientation(self) -> tuple[float, ...]:
        """ImageOrientationPatient of the canonical slices."""
        return self.grids[0].orientation

    @property
    def normal(self) -> np.ndarray:
        return self.grids[0].normal

    @property
    def slice_spacing_mm(self) -> float | None:
        if len(self.slice_positions_mm) < 2:
            return None
        return float(np.median(np.diff(self.slice_positions_mm)))

    @property
    def obliquity_deg(self) -> float:
        """Angle between the slice normal and the patient left-right axis."""
        return angle_to_axis_deg(self.normal, 0)


@dataclass
class _Frame:
    """One 2-D image of the series before sorting: a single-frame instance or one frame."""

    ref: SliceRef
    grid: PlaneGrid
    thickness: float | None
    pixels: np.ndarray  # stored values, source layout
    slope: float
    intercept: float
    monochrome1: bool
    bits_stored: int
    signed: bool


def decodable_transfer_syntaxes() -> list[UID]:
    """Transfer syntaxes for which a pixel decoder is installed here."""
    from pydicom import uid

    candidates = [
        uid.ImplicitVRLittleEndian, uid.ExplicitVRLittleEndian, uid.DeflatedExplicitVRLittleEndian,
        uid.ExplicitVRBigEndian, uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLossless,
        uid.JPEGLosslessSV1, uid.JPEGLSLossless, uid.JPEGLSNearLossless, uid.JPEG2000Lossless,
        uid.JPEG2000, uid.HTJ2KLossless, uid.HTJ2KLosslessRPCL, uid.HTJ2K, uid.RLELossless,
    ]
    return [ts for ts in candidates if _decoder_available(ts)]


def _decoder_available(ts: UID) -> bool:
    try:
        return get_decoder(ts).is_available
    except NotImplementedError:
        return False


def dicom_files(path: str | os.PathLike) -> list[Path]:
    """Files of a folder (recursively, sorted; hidden files and DICOMDIR skipped) or one file."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise errors.NoDicomFilesError(f"{path}: no such file or folder")
    files = sorted(
        p for p in path.rglob("*")
        if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR"
    )
    if not files:
        raise errors.NoDicomFilesError(f"{path}: the folder holds no files")
    return files


def read_dataset(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path)
    except InvalidDicomError as exc:
        raise errors.MalformedFileError(f"{path.name}: not a DICOM Part 10 file ({exc})") from exc
    except Exception as exc:  # truncated or corrupt files raise many kinds of errors in pydicom
        raise errors.MalformedFileError(f"{path.name}: unreadable DICOM file ({type(exc).__name__}: {exc})") from exc


def load_series(
    source: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    require_volume: bool = True,
    max_obliquity_deg: float = 30.0,
) -> Series:
    """Load one sagittal MR series from a folder, a file or a list of files.

    require_volume: refuse a single slice (False allows one 2-D slice, e.g. for `analyze`).
    max_obliquity_deg: largest accepted angle between the slice normal and the left-right axis.
    """
    if isinstance(source, (str, os.PathLike)):
        paths = dicom_files(source)
    else:
        paths = [Path(p) for p in source]
        if not paths:
            raise errors.NoDicomFilesError("no files given")
    datasets = [(p, read_dataset(p)) for p in paths]
    datasets = [(p, ds) for p, ds in datasets if _sop_class(ds) != MEDIA_STORAGE_DIRECTORY]
    if not datasets:
        raise errors.NoDicomFilesError("only a DICOMDIR was found, no images")

    for path, ds in datasets:
        missing = [k for k in _REQUIRED_UIDS if not ds.get(k)]
        if missing:
            raise errors.MalformedFileError(f"{path.name}: no {', '.join(missing)}")
    first = datasets[0][1]
    study_uid, series_uid = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    for path, ds in datasets:
        if ds.SeriesInstanceUID != series_uid:
            raise errors.MixedSeriesError(
                f"{path.name} belongs to series {ds.SeriesInstanceUID}, not {series_uid}: "
                "give one series at a time")
        modality = str(ds.get("Modality", ""))
        if modality != "MR":
            raise errors.NotMRError(f"{path.name}: modality is {modality or 'missing'}, the method needs MR")

    frames = [frame for path, ds in datasets for frame in _frames(path, ds)]
    return _assemble(frames, datasets, study_uid, series_uid, require_volume, max_obliquity_deg)


def _assemble(frames, datasets, study_uid, series_uid, require_volume, max_obliquity_deg) -> Series:
    reference = frames[0].grid
    for frame in frames[1:]:
        if frame.grid.shape != reference.shape:
            raise errors.MixedGeometryError(
                f"image {frame.ref.sop_instance_uid} is {frame.grid.shape[0]}x{frame.grid.shape[1]}, "
                f"others are {reference.shape[0]}x{reference.shape[1]}")
        if not np.allclose(frame.grid.orientation, reference.orientation, atol=_ORIENTATION_TOLERANCE):
            raise errors.MixedGeometryError(
                f"image {frame.ref.sop_instance_uid} has another orientation than the rest of the series")
        if not np.allclose(frame.grid.spacing, reference.spacing, rtol=1e-3):
            raise errors.MixedGeometryError(
                f"image {frame.ref.sop_instance_uid} has pixel spacing {frame.grid.spacing}, "
                f"others {reference.spacing}")

    normal = reference.normal
    if plane_name(normal) != "sagittal" or angle_to_axis_deg(normal, 0) > max_obliquity_deg:
        raise errors.NotSagittalError(
            f"slices are {plane_name(normal)} (normal {angle_to_axis_deg(normal, 0):.0f} deg from the "
            f"left-right axis, at most {max_obliquity_deg:.0f} accepted): the method needs a sagittal series")

    if require_volume and len(frames) < 2:
        raise errors.SingleSliceError("the series has a single slice; a sagittal stack is required")

    # Order slices from the patient's right to left along the slice normal.
    toward_left = normal if normal[0] >= 0 else -normal
    positions = np.array([float(np.dot(f.grid.origin, toward_left)) for f in frames])
    order = np.argsort(positions, kind="stable")
    frames = [frames[i] for i in order]
    positions = positions[order]
    gaps = np.diff(positions)
    if np.any(gaps < _SAME_POSITION_MM):
        k = int(np.argmin(gaps))
        raise errors.DuplicateSlicePositionError(
            f"images {frames[k].ref.sop_instance_uid} and {frames[k + 1].ref.sop_instance_uid} lie at the "
            f"same position ({positions[k]:.2f} mm): several echoes or repeats in one series")

    warnings: list[str] = []
    if len(gaps) > 1 and np.ptp(gaps) > 0.1 * float(np.median(gaps)) + 1e-3:
        warnings.append(f"irregular_slice_spacing:{gaps.min():.2f}_to_{gaps.max():.2f}_mm")

    in_plane = InPlaneFlip.for_sagittal(reference.row_dir, reference.col_dir)
    pixels = np.stack([_values(f) for f in frames])
    pixels = in_plane.to_canonical(pixels).astype(np.float32, copy=False)
    grids = tuple(in_plane.grid_to_canonical(f.grid) for f in frames)

    thicknesses = {f.thickness for f in frames if f.thickness is not None}
    first = datasets[0][1]
    by_uid = {str(ds.SOPInstanceUID): ds for _, ds in datasets}
    headers = [by_uid[uid] for uid in dict.fromkeys(f.ref.sop_instance_uid for f in frames)]
    for ds in headers:
        del ds.PixelData  # decoded already; a header is all the derived objects need
    return Series(
        pixels=pixels,
        pixel_spacing_mm=grids[0].spacing,
        slice_positions_mm=positions,
        slice_thickness_mm=thicknesses.pop() if len(thicknesses) == 1 else None,
        grids=grids,
        in_plane=in_plane,
        source_orientation=reference.orientation,
        slices=tuple(f.ref for f in frames),
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")) or None,
        modality="MR",
        series_description=str(first.get("SeriesDescription", "")),
        body_part_examined=str(first.get("BodyPartExamined", "")),
        transfer_syntaxes=tuple(sorted({str(ds.file_meta.TransferSyntaxUID) for _, ds in datasets})),
        warnings=tuple(warnings),
        headers=tuple(headers),
    )


def _values(frame: _Frame) -> np.ndarray:
    """Stored values -> float32 modality values; MONOCHROME1 inverted over the stored range."""
    values = frame.pixels.astype(np.float32) * np.float32(frame.slope) + np.float32(frame.intercept)
    if frame.monochrome1:
        lowest = -(2 ** (frame.bits_stored - 1)) if frame.signed else 0
        highest = 2 ** (frame.bits_stored - 1) - 1 if frame.signed else 2**frame.bits_stored - 1
        ends = np.array([lowest, highest], np.float32) * np.float32(frame.slope) + np.float32(frame.intercept)
        values = ends.sum() - values
    return values


def _sop_class(ds: Dataset) -> str:
    return str(ds.get("SOPClassUID", getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "")))


def _decode(path: Path, ds: Dataset) -> np.ndarray:
    if "PixelData" not in ds:
        kinds = [k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds]
        detail = f" (it has {kinds[0]}, which MR magnitude images do not use)" if kinds else ""
        raise errors.MissingPixelDataError(f"{path.name}: the image has no Pixel Data{detail}")
    ts = UID(str(ds.file_meta.get("TransferSyntaxUID", "")))
    if not _decoder_available(ts):
        raise errors.UnsupportedTransferSyntaxError(
            f"{path.name}: no decoder here for transfer syntax {ts.name} ({ts}); "
            f"decodable: {', '.join(t.name for t in decodable_transfer_syntaxes())}")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if int(ds.get("SamplesPerPixel", 1)) != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise errors.UnsupportedImageError(
            f"{path.name}: photometric interpretation {photometric or 'missing'} with "
            f"{ds.get('SamplesPerPixel', '?')} samples per pixel; MR greyscale (MONOCHROME1/2) is needed")
    try:
        return ds.pixel_array
    except Exception as exc:
        raise errors.PixelDataError(f"{path.name}: pixel data in {ts.name} did not decode ({exc})") from exc


def _frames(path: Path, ds: Dataset) -> list[_Frame]:
    pixels = _decode(path, ds)
    common = dict(
        monochrome1=ds.PhotometricInterpretation == "MONOCHROME1",
        bits_stored=int(ds.get("BitsStored", 16)),
        signed=int(ds.get("PixelRepresentation", 0)) == 1,
    )
    sop_class, sop_uid = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        return _enhanced_frames(path, ds, pixels, sop_class, sop_uid, common)
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise errors.MissingGeometryError(
            f"{path.name}: a multi-frame image without functional groups; its frames cannot be placed")
    geometry = {k: ds.get(k) for k in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing")}
    missing = [k for k, v in geometry.items() if not v]
    if missing:
        raise errors.MissingGeometryError(f"{path.name}: no {', '.join(missing)}; slices cannot be placed")
    grid = PlaneGrid.from_dicom(geometry["ImageOrientationPatient"], geometry["ImagePositionPatient"],
                                geometry["PixelSpacing"], ds.Rows, ds.Columns)
    return [_Frame(
        ref=SliceRef(sop_class, sop_uid, None),
        grid=grid,
        thickness=_float_or_none(ds.get("SliceThickness")),
        pixels=pixels,
        slope=float(ds.get("RescaleSlope", 1) or 1),
        intercept=float(ds.get("RescaleIntercept", 0) or 0),
        **common,
    )]


def _enhanced_frames(path, ds, pixels, sop_class, sop_uid, common) -> list[_Frame]:
    """Frames of an Enhanced MR image, placed by their (per-frame or shared) functional groups."""
    count = int(ds.get("NumberOfFrames", 1))
    pixels = pixels.reshape(count, int(ds.Rows), int(ds.Columns))
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else Dataset()
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or [Dataset()] * count

    def group(frame_groups: Dataset, sequence: str, keyword: str):
        for source in (frame_groups, shared):
            if sequence in source and len(source[sequence].value) and keyword in source[sequence][0]:
                return source[sequence][0].get(keyword)
        return None

    frames = []
    for index, groups in enumerate(per_frame):
        iop = group(groups, "PlaneOrientationSequence", "ImageOrientationPatient")
        ipp = group(groups, "PlanePositionSequence", "ImagePositionPatient")
        spacing = group(groups, "PixelMeasuresSequence", "PixelSpacing")
        if not (iop and ipp and spacing):
            raise errors.MissingGeometryError(
                f"{path.name}: frame {index + 1} lacks plane orientation, position or pixel spacing")
        slope = group(groups, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = group(groups, "PixelValueTransformationSequence", "RescaleIntercept")
        frames.append(_Frame(
            ref=SliceRef(sop_class, sop_uid, index + 1),
            grid=PlaneGrid.from_dicom(iop, ipp, spacing, ds.Rows, ds.Columns),
            thickness=_float_or_none(group(groups, "PixelMeasuresSequence", "SliceThickness")),
            pixels=pixels[index],
            slope=float(slope if slope not in (None, "") else 1),
            intercept=float(intercept if intercept not in (None, "") else 0),
            **common,
        ))
    return frames


def _float_or_none(value) -> float | None:
    return None if value in (None, "") else float(value)


def describe(series: Series) -> dict:
    """What the loader understood, as plain data (for `lumbarnode inspect`)."""
    n = series.shape[0]
    return {
        "orientation": plane_name(series.normal),
        "obliquity_deg": round(series.obliquity_deg, 2),
        "shape": {"slices": n, "rows": series.shape[1], "cols": series.shape[2]},
        "layout": "slices right->left, rows superior->inferior, cols anterior->posterior",
        "pixel_spacing_mm": [round(x, 4) for x in series.pixel_spacing_mm],
        "slice_spacing_mm": None if series.slice_spacing_mm is None else round(series.slice_spacing_mm, 4),
        "slice_thickness_mm": series.slice_thickness_mm,
        "slice_positions_mm": [round(float(x), 3) for x in series.slice_positions_mm],
        "source_orientation": [round(x, 5) for x in series.source_orientation],
        "in_plane": {"transpose": series.in_plane.transpose, "flip_rows": series.in_plane.flip_rows,
                     "flip_cols": series.in_plane.flip_cols},
        "value_range": [float(series.pixels.min()), float(series.pixels.max())],
        "study_instance_uid": series.study_instance_uid,
        "series_instance_uid": series.series_instance_uid,
        "frame_of_reference_uid": series.frame_of_reference_uid,
        "series_description": series.series_description,
        "body_part_examined": series.body_part_examined,
        "transfer_syntaxes": [f"{UID(ts).name} ({ts})" for ts in series.transfer_syntaxes],
        "sop_instance_uids": [s.sop_instance_uid if s.frame_number is None
                              else f"{s.sop_instance_uid} frame {s.frame_number}" for s in series.slices],
        "warnings": list(series.warnings),
    }
