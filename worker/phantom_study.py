"""Test studies on disk: a synthetic phantom (with exact ground truth) written as DICOM.

Layout of a written study folder:
    <out>/dicom/IM0001.dcm ...   the MR series (MR Image Storage, explicit VR little endian)
    <out>/labels.npz             `labels` (slices, rows, cols) uint8 on the same pixel grid
    <out>/truth.json             the exact LLA, its class, endplates, parameters and UIDs
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dicom_io.mr_writer import MRSeriesInfo, Patient, write_mr_series
from pipeline.synthetic.phantom import LABELS, Phantom, PhantomParams, make_phantom


@dataclass(frozen=True)
class WrittenStudy:
    dicom_dir: Path
    labels_path: Path
    truth_path: Path
    truth: dict


def write_phantom_study(params: PhantomParams, out_dir: str | Path) -> WrittenStudy:
    out_dir = Path(out_dir)
    phantom = make_phantom(params)
    key = "phantom:" + json.dumps(dataclasses.asdict(params), sort_keys=True)
    info = MRSeriesInfo(
        key=key,
        patient=Patient(name="PHANTOM^LUMBAR", id=f"PHANTOM-{params.seed}"),
        contrast=params.contrast,
        study_description="MR LUMBAR SPINE (synthetic phantom)",
        series_description=f"{params.contrast.upper()} TSE SAG (synthetic phantom)",
        slice_thickness_mm=params.slice_thickness_mm,
    )
    paths = write_mr_series(np.clip(phantom.image, 0, 4095), (params.row_spacing_mm, params.col_spacing_mm),
                            phantom.slice_positions_mm, info, out_dir / "dicom")
    labels_path = out_dir / "labels.npz"
    np.savez_compressed(labels_path, labels=phantom.labels)
    truth = _truth(phantom, info, len(paths))
    truth_path = out_dir / "truth.json"
    truth_path.write_text(json.dumps(truth, indent=2) + "\n")
    return WrittenStudy(out_dir / "dicom", labels_path, truth_path, truth)


def _truth(phantom: Phantom, info: MRSeriesInfo, count: int) -> dict:
    return {
        "lla_deg": phantom.lla_deg,
        "class": phantom.lla_class,
        "how_exact": ("the L1 and S1 superior endplates are constructed as straight lines at a set angle in "
                      "patient millimetres; the LLA is that angle, before any rasterisation"),
        "mid_slice": phantom.mid_slice,
        "levels": list(phantom.levels),
        "inplane_rotation_deg": phantom.inplane_rotation_deg,
        "superior_endplates_px": {k: [list(p) for p in v] for k, v in phantom.superior_endplates_px.items()},
        "superior_endplates_mm": {k: [list(p) for p in v] for k, v in phantom.superior_endplates_mm.items()},
        "label_values": LABELS,
        "params": dataclasses.asdict(phantom.params),
        "study_instance_uid": info.uid("study"),
        "series_instance_uid": info.uid("series"),
        "instances": count,
    }
