"""Write a canonical sagittal volume as a valid DICOM MR Image Storage series.

Used for test studies (the synthetic phantom, real pixels from public datasets wrapped in
invented headers) and the demo. The input is in the canonical layout of
`dicom_io.geometry` (slices right -> left, rows superior -> inferior, columns anterior ->
posterior); `in_plane` can store the slices transposed or mirrored instead, with the
ImageOrientationPatient / ImagePositionPatient that say so, as some scanners do.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, PYDICOM_IMPLEMENTATION_UID

from dicom_io.geometry import SAGITTAL_IOP, InPlaneFlip, PlaneGrid
from dicom_io.results import software_version
from dicom_io.uids import derived_uid

SOFTWARE_NAME = "lumbarnode"

# Typical 1.5 T turbo spin echo parameters, so that the headers read like a real protocol.
_PROTOCOLS = {
    "t2": dict(RepetitionTime=3500.0, EchoTime=100.0, EchoTrainLength=17, SequenceName="*tse2d1_17"),
    "t1": dict(RepetitionTime=550.0, EchoTime=12.0, EchoTrainLength=3, SequenceName="*tse2d1_3"),
}


@dataclass(frozen=True)
class Patient:
    name: str = "PHANTOM^LUMBAR"
    id: str = "PHANTOM-0"
    birth_date: str = ""
    sex: str = "O"


@dataclass(frozen=True)
class MRSeriesInfo:
    """The headers of one written series. UIDs default to ones derived from `key`."""

    key: str  # seeds every derived UID; same key -> same study, series and instance UIDs
    patient: Patient = field(default_factory=Patient)
    contrast: str = "t2"
    study_description: str = "MR LUMBAR SPINE"
    series_description: str = "T2 TSE SAG"
    series_number: int = 1
    accession_number: str = ""
    body_part_examined: str = "LSPINE"
    slice_thickness_mm: float = 4.0
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "OTHER")
    manufacturer: str = SOFTWARE_NAME
    institution_name: str = ""
    acquired: dt.datetime = dt.datetime(2026, 1, 1, 8, 0, 0)
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    frame_of_reference_uid: str | None = None

    def uid(self, kind: str) -> str:
        explicit = {"study": self.study_instance_uid, "series": self.series_instance_uid,
                    "frame_of_reference": self.frame_of_reference_uid}[kind]
        return explicit or derived_uid(self.key, kind)


def to_stored_values(volume: np.ndarray, max_value: int = 4095) -> np.ndarray:
    """Scale any real-valued volume linearly onto 0..max_value as uint16 (min -> 0, max -> max_value)."""
    volume = np.asarray(volume, dtype=np.float64)
    low, high = float(np.min(volume)), float(np.max(volume))
    scale = max_value / (high - low) if high > low else 0.0
    return np.round((volume - low) * scale).astype(np.uint16)


def canonical_grid(shape: tuple[int, int], spacing: tuple[float, float], position_mm: float) -> PlaneGrid:
    """A standard sagittal slice at x = position_mm, centred on the scanner's isocentre."""
    rows, cols = shape
    origin = np.array([position_mm, -(cols - 1) / 2 * spacing[1], (rows - 1) / 2 * spacing[0]])
    return PlaneGrid.from_dicom(SAGITTAL_IOP, origin, spacing, rows, cols)


def build_mr_datasets(
    volume: np.ndarray,
    pixel_spacing_mm: tuple[float, float],
    slice_positions_mm: Sequence[float],
    info: MRSeriesInfo,
    in_plane: InPlaneFlip = InPlaneFlip(),
) -> list[Dataset]:
    """One MR Image Storage dataset per slice of a canonical volume of stored values (uint16)."""
    volume = np.asarray(volume)
    if volume.ndim != 3 or len(slice_positions_mm) != volume.shape[0]:
        raise ValueError("volume must be (slices, rows, cols) with one position per slice")
    if volume.dtype != np.uint16:
        if volume.min() < 0 or volume.max() > 65535 or not np.all(np.isfinite(volume)):
            raise ValueError("stored values must lie in 0..65535; scale them with to_stored_values()")
        volume = np.round(volume).astype(np.uint16)
    bits_stored = 12 if int(volume.max()) < 4096 else 16
    spacing_between = float(np.median(np.diff(slice_positions_mm))) if len(slice_positions_mm) > 1 else None
    study_uid, series_uid = info.uid("study"), info.uid("series")
    when = info.acquired
    window = _window(volume)  # one window for the series, computed once (not per slice)
    datasets = []
    for index, (slice_values, position) in enumerate(zip(volume, slice_positions_mm)):
        grid = in_plane.grid_to_source(canonical_grid(volume.shape[1:], pixel_spacing_mm, float(position)))
        pixels = in_plane.to_source(slice_values)
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = derived_uid(series_uid, "instance", index)
        # Patient
        ds.PatientName = info.patient.name
        ds.PatientID = info.patient.id
        ds.PatientBirthDate = info.patient.birth_date
        ds.PatientSex = info.patient.sex
        # General Study
        ds.StudyInstanceUID = study_uid
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = when.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = when.strftime("%H%M%S")
        ds.AcquisitionTime = ds.ContentTime = (when + dt.timedelta(seconds=index)).strftime("%H%M%S")
        ds.ReferringPhysicianName = ""
        ds.StudyID = "1"
        ds.AccessionNumber = info.accession_number
        ds.StudyDescription = info.study_description
        # General Series
        ds.Modality = "MR"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = info.series_number
        ds.SeriesDescription = info.series_description
        ds.BodyPartExamined = info.body_part_examined
        ds.PatientPosition = "HFS"
        # Frame of Reference
        ds.FrameOfReferenceUID = info.uid("frame_of_reference")
        ds.PositionReferenceIndicator = ""
        # General Equipment
        ds.Manufacturer = info.manufacturer
        ds.InstitutionName = info.institution_name
        ds.SoftwareVersions = software_version()
        # General Image
        ds.InstanceNumber = index + 1
        ds.ImageType = list(info.image_type)
        # Image Plane
        ds.ImageOrientationPatient = [_ds(x) for x in grid.orientation]
        ds.ImagePositionPatient = [_ds(x) for x in grid.origin]
        ds.PixelSpacing = [_ds(x) for x in grid.spacing]
        ds.SliceThickness = _ds(info.slice_thickness_mm)
        ds.SliceLocation = _ds(float(position))
        # Image Pixel
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = pixels.shape
        ds.BitsAllocated = 16
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = 0
        ds.PixelData = pixels.astype("<u2").tobytes()
        ds.WindowCenter, ds.WindowWidth = window
        # MR Image
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = ["SK", "SP"]
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.AngioFlag = "N"
        ds.MagneticFieldStrength = "1.5"
        ds.ImagingFrequency = "63.87"
        ds.ImagedNucleus = "1H"
        ds.NumberOfAverages = "2"
        ds.FlipAngle = "150" if info.contrast == "t2" else "90"
        if spacing_between is not None:
            ds.SpacingBetweenSlices = _ds(spacing_between)
        for keyword, value in _PROTOCOLS[info.contrast].items():
            setattr(ds, keyword, value)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta.ImplementationVersionName = f"{SOFTWARE_NAME}_{software_version()}"[:16]
        datasets.append(ds)
    return datasets


def write_mr_series(
    volume: np.ndarray,
    pixel_spacing_mm: tuple[float, float],
    slice_positions_mm: Sequence[float],
    info: MRSeriesInfo,
    out_dir: str | Path,
    in_plane: InPlaneFlip = InPlaneFlip(),
) -> list[Path]:
    """Build the series and write one Part 10 file per slice (IM0001.dcm, ...) into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in build_mr_datasets(volume, pixel_spacing_mm, slice_positions_mm, info, in_plane):
        path = out_dir / f"IM{ds.InstanceNumber:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _window(volume: np.ndarray) -> tuple[str, str]:
    low, high = np.percentile(volume, [1, 99.5])
    return _ds((low + high) / 2), _ds(max(high - low, 1.0))


def _ds(value: float) -> str:
    """A Decimal String of at most 16 characters."""
    text = f"{value:.6g}"
    return "0" if text in ("-0", "-0.0") else text
