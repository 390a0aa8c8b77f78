"""DICOM test files built on the fly: a list of datasets saved as a series, an enhanced
multi-frame image made from single frames, a small sagittal MR series with headers
overwritten."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicom_io.mr_writer import MRSeriesInfo, write_mr_series
from dicom_io.series import ENHANCED_MR_STORAGE


def save(datasets: list[Dataset], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, ds in enumerate(datasets):
        ds.save_as(folder / f"{i:03d}.dcm", enforce_file_format=True)
    return folder


def enhanced_from(datasets: list[Dataset]) -> Dataset:
    """One Enhanced MR instance holding the frames of a single-frame series, in reverse order."""
    frames = datasets[::-1]
    ds = copy.deepcopy(frames[0])
    ds.SOPClassUID = ENHANCED_MR_STORAGE
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "SliceThickness"):
        delattr(ds, keyword)
    ds.NumberOfFrames = len(frames)
    shared = Dataset()
    orientation, measures = Dataset(), Dataset()
    orientation.ImageOrientationPatient = frames[0].ImageOrientationPatient
    measures.PixelSpacing, measures.SliceThickness = frames[0].PixelSpacing, frames[0].SliceThickness
    shared.PlaneOrientationSequence = Sequence([orientation])
    shared.PixelMeasuresSequence = Sequence([measures])
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = "2", "10", "US"
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for frame in frames:
        item, position = Dataset(), Dataset()
        position.ImagePositionPatient = frame.ImagePositionPatient
        item.PlanePositionSequence = Sequence([position])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = b"".join(f.PixelData for f in frames)
    return ds


def write_series(folder: Path, key: str, *, slices: int = 4, shape=(48, 64), **headers) -> list[Path]:
    """A sagittal lumbar MR series; `headers` overwrite elements of every file afterwards."""
    volume = np.random.default_rng(7).integers(0, 800, (slices, *shape), dtype=np.uint16)
    write_mr_series(volume, (1.0, 1.0), [4.0 * i for i in range(slices)], MRSeriesInfo(key=key), folder)
    files = sorted(folder.glob("*.dcm"))
    for path in files:
        ds = pydicom.dcmread(path)
        for name, value in headers.items():
            setattr(ds, name, value(ds) if callable(value) else value)
        ds.save_as(path)
    return files
