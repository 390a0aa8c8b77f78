"""Labelled sagittal volumes (`.npz`, NIfTI, PNG slices: the formats of `../shared/data`) read into the canonical layout, and written as DICOM.

Every reader returns a `RealVolume`: image (slices, rows, cols) with rows superior ->
inferior and columns anterior -> posterior, labels in the project's numbering where the
source has them (11 T11, 12 T12, 20..24 L1..L5, 26 S1/sacrum; 2-D semantic masks keep
their own 1 vertebra, 2 disc, 3 canal), and the spacing in mm. `wrap_as_dicom` turns one
into a DICOM MR series with invented headers and the real pixels, so that end-to-end tests
can run on real anatomy. Nothing here copies data into the repository.

Caveats from the data's README that matter here: the left-right order of the `.npz` slices
is not known; SPIDER and Vesal PNG slices have lost their pixel spacing (1 mm square is
assumed unless a spacing is given, which is fine for segmentation and wrong for angles).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from dicom_io.mr_writer import MRSeriesInfo, Patient, to_stored_values, write_mr_series

@dataclass(frozen=True)
class RealVolume:
    image: np.ndarray  # (slices, rows, cols), canonical layout, source intensities
    labels: np.ndarray | None  # same shape, or None when the source has none
    spacing_mm: tuple[float, float, float]  # (slice, row, col); assumed where the source lost it
    spacing_known: bool
    source: str  # file name(s) it came from, for provenance
    label_names: dict[int, str]


def load_real(paths: str | Path | Sequence[str | Path],
              spacing_mm: tuple[float, float, float] | None = None) -> RealVolume:
    """Read a `.npz` volume, a NIfTI volume, or one or more PNG slices (stacked in order)."""
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not paths:
        raise ValueError("no input files")
    suffix = "".join(paths[0].suffixes[-2:]) if paths[0].name.endswith(".nii.gz") else paths[0].suffix
    if len(paths) > 1 and suffix != ".png":
        raise ValueError("several inputs are only supported for PNG slices")
    if suffix == ".npz":
        volume = _load_npz(paths[0])
    elif suffix in (".nii", ".nii.gz"):
        volume = _load_nifti(paths[0])
    elif suffix == ".png":
        volume = _load_pngs(paths)
    else:
        raise ValueError(f"{paths[0].name}: unsupported input (expected .npz, .nii[.gz] or .png)")
    if spacing_mm is not None:
        volume = RealVolume(volume.image, volume.labels, tuple(float(s) for s in spacing_mm), True,
                            volume.source, volume.label_names)
    return volume


def _load_npz(path: Path) -> RealVolume:
    with np.load(path) as data:
        names = {int(v): str(n) for v, n in zip(data["label_values"], data["label_names"])}
        return RealVolume(
            image=data["image"], labels=data["labels"],
            spacing_mm=tuple(float(s) for s in data["spacing_mm"]), spacing_known=True,
            source=f"{path.parent.name}/{path.name}", label_names=names,
        )


def _load_nifti(path: Path) -> RealVolume:
    import nibabel as nib

    image = nib.as_closest_canonical(nib.load(path))  # axes toward Right, Anterior, Superior
    data = np.asarray(image.dataobj, dtype=np.float32)
    zooms = image.header.get_zooms()[:3]
    # RAS (x, y, z) -> (slice right->left, row superior->inferior, col anterior->posterior)
    canonical = np.transpose(data, (0, 2, 1))[::-1, ::-1, ::-1]
    return RealVolume(
        image=np.ascontiguousarray(canonical), labels=None,
        spacing_mm=(float(zooms[0]), float(zooms[2]), float(zooms[1])), spacing_known=True,
        source=f"{path.parent.name}/{path.name}", label_names={},
    )


def _load_pngs(paths: Sequence[Path]) -> RealVolume:
    images, masks = [], []
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise ValueError(f"{path.name}: not a readable image")
        images.append(image)
        mask_path = path.parent.parent / "masks" / path.name  # the shared data's images/ + masks/ layout
        masks.append(cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE) if mask_path.is_file() else None)
    if len({im.shape for im in images}) != 1:
        raise ValueError("the PNG slices differ in size")
    labels = np.stack(masks) if all(m is not None for m in masks) else None
    return RealVolume(
        image=np.stack(images), labels=labels, spacing_mm=(1.0, 1.0, 1.0), spacing_known=False,
        source=", ".join(f"{p.parent.parent.name}/{p.name}" for p in paths),
        label_names={1: "vertebra", 2: "disc", 3: "canal"} if labels is not None else {},
    )


def wrap_as_dicom(volume: RealVolume, out_dir: str | Path, *, key: str | None = None,
                  patient: Patient | None = None, series_description: str | None = None) -> list[Path]:
    """Write the real pixels as a sagittal MR series with invented headers.

    uint8/uint16 sources keep their values; float sources are scaled onto 0..4095.
    Slices are centred on the isocentre at the volume's slice spacing.
    """
    image = volume.image
    stored = image if image.dtype in (np.uint8, np.uint16) else to_stored_values(image)
    slice_mm, row_mm, col_mm = volume.spacing_mm
    positions = (np.arange(image.shape[0]) - (image.shape[0] - 1) / 2) * slice_mm
    key = key or f"wrapped:{volume.source}"
    info = MRSeriesInfo(
        key=key,
        patient=patient or Patient(name="ANON^REAL", id="REAL-" + _short_hash(key)),
        study_description="MR LUMBAR SPINE (public dataset, invented headers)",
        series_description=series_description or f"SAG {volume.source}"[:64],
        slice_thickness_mm=slice_mm,
        image_type=("DERIVED", "SECONDARY", "OTHER"),
    )
    return write_mr_series(stored, (row_mm, col_mm), positions, info, out_dir)


def _short_hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:8].upper()
