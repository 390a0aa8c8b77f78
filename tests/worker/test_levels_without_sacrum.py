"""Issue 25, point 6: no levels counted from the bottom of the image when S1 is not seen.

Through the public commands, with the shipped networks: a phantom study whose view ends above
the sacrum (rows cut off each stored image, as a smaller field of view would) gets no level
that is not its own, in `analyze --json` and in the SEG and SR that `process` writes; the same
study uncropped still gets L1..S1. Pipeline-level cases are in tests/pipeline/test_identify.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

LUMBARNODE = Path(sys.executable).with_name("lumbarnode")
LEVELS = {"T11": 11, "T12": 12, "L1": 20, "L2": 21, "L3": 22, "L4": 23, "L5": 24, "L6": 25, "S1": 26}
WITHHELD_OR_UNCONFIRMED = {"s1_not_found", "levels_unconfirmed"}


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(LUMBARNODE), *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantom")
    done = run("phantom", "--out", str(out), "--seed", "0", "--slices", "7")
    assert done.returncode == 0, done.stderr
    return out


def truth_labels(study: Path) -> np.ndarray:
    return np.load(study / "labels.npz")["labels"]


def level_rows(labels: np.ndarray, level: str) -> np.ndarray:
    return np.nonzero((labels == LEVELS[level]).any(axis=(0, 2)))[0]


def cropped_series(study: Path, rows: int, folder: Path) -> Path:
    """The study's images with every row from `rows` down removed (Rows fixed, pixels cut)."""
    folder.mkdir(parents=True)
    for path in sorted((study / "dicom").glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.PixelData = np.ascontiguousarray(ds.pixel_array[:rows]).tobytes()
        ds.Rows = rows
        ds.save_as(folder / path.name, enforce_file_format=True)
    return folder


def crop_rows(study: Path, view: str) -> int:
    labels = truth_labels(study)
    if view == "T11..L3":  # the case: every row below L3 removed
        return int(level_rows(labels, "L3").max()) + 1
    l5 = level_rows(labels, "L5")  # the view ends halfway down L5: the sacrum and half of L5 out of view
    return int((l5.min() + l5.max()) // 2)


def analyze_json(series: Path) -> tuple[int, dict]:
    done = run("analyze", str(series), "--json")
    return done.returncode, json.loads(done.stdout)


def wrong_levels(result: dict, labels: np.ndarray) -> dict[str, int]:
    """Levels reported on a body that the phantom's own labels give another value (or none) at
    its centroid. Not S1: the curved sacrum's centroid may lie off its bone (it is right when L5 is)."""
    if result["slice_index"] is None:
        return {level: -1 for level in result["vertebrae"]}
    truth = labels[result["slice_index"]]
    wrong = {}
    for level, body in result["vertebrae"].items():
        if level == "S1":
            if "L5" not in result["vertebrae"]:
                wrong[level] = -1
            continue
        row, col = (int(round(v)) for v in body["centroid"])
        if row >= truth.shape[0] or truth[row, col] != LEVELS[level]:
            wrong[level] = int(truth[min(row, truth.shape[0] - 1), col])
    return wrong


def sr_items(ds: pydicom.Dataset):
    for item in ds.get("ContentSequence", []):
        yield item
        yield from sr_items(item)


@pytest.fixture(scope="module", params=["T11..L3", "L5 cut"])
def cropped(request, study, tmp_path_factory) -> tuple[str, Path, np.ndarray]:
    rows = crop_rows(study, request.param)
    folder = cropped_series(study, rows, tmp_path_factory.mktemp("cropped") / "dicom")
    return request.param, folder, truth_labels(study)[:, :rows]


def test_without_the_sacrum_in_view_analyze_labels_no_level_wrongly(cropped):
    view, series, labels = cropped
    code, result = analyze_json(series)
    assert code in (0, 3), result
    flags = set(result["flags"])
    assert flags & WITHHELD_OR_UNCONFIRMED, (view, result["flags"])
    if "levels_unconfirmed" not in flags:
        # withheld: no level at all, no angle from levels that are not there
        assert result["vertebrae"] == {} and result["lla_deg"] is None and code == 3
    assert "levels_unconfirmed" in flags or not wrong_levels(result, labels), (view, result["vertebrae"])


def test_without_the_sacrum_in_view_process_writes_no_level_in_the_seg_and_says_why_in_the_sr(
        cropped, tmp_path):
    view, series, _ = cropped
    done = run("process", str(series), "--out", str(tmp_path))
    assert done.returncode in (0, 3), done.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    flags = set(result["flags"])
    assert flags & WITHHELD_OR_UNCONFIRMED, (view, result["flags"])

    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    labels = [str(s.SegmentLabel) for s in seg.SegmentSequence]
    named = [label for label in labels if label.split()[0] in LEVELS]
    assert "Vertebra, level not identified" in labels  # the bodies are there, unlabelled
    if "levels_unconfirmed" in flags:
        assert named and all("unconfirmed" in label for label in named), labels
    else:
        assert named == [], labels

    sr = pydicom.dcmread(tmp_path / "sr.dcm")
    items = list(sr_items(sr))
    flag_codes = {str(i.ConceptCodeSequence[0].CodeValue) for i in items if "ConceptCodeSequence" in i
                  and i.ConceptNameCodeSequence[0].CodeValue == "QUALITY-FLAG"}
    assert flag_codes & WITHHELD_OR_UNCONFIRMED, flag_codes
    comments = [str(i.TextValue) for i in items if i.get("ValueType") == "TEXT"
                and i.ConceptNameCodeSequence[0].CodeValue == "121106"]
    # what OHIF shows: the SR says in words why the levels are missing or not sure
    reason = "Flag: Levels unconfirmed" if "levels_unconfirmed" in flags else "Flag: S1 not identified"
    assert any(c.startswith(reason) for c in comments), comments
    if "levels_unconfirmed" not in flags:  # no Cobb angle between levels that were not identified
        assert not any(i.get("ValueType") == "NUM" and i.ConceptNameCodeSequence[0].CodeValue == "285285000"
                       for i in items)


def test_the_whole_study_still_gets_l1_to_s1(study):
    code, result = analyze_json(study / "dicom")
    assert code == 0, result
    assert {"L1", "L2", "L3", "L4", "L5", "S1"} <= set(result["vertebrae"])
    assert not set(result["flags"]) & WITHHELD_OR_UNCONFIRMED, result["flags"]
    assert wrong_levels(result, truth_labels(study)) == {}
    assert result["lla_deg"] is not None


# --- the builders, given levels counted from an S1 that was not confirmed --------------------

def test_seg_and_sr_say_unconfirmed_on_every_level_when_the_flag_is_set(tmp_path):
    import highdicom as hd

    from dicom_io import codes
    from dicom_io.seg import build_segmentation
    from dicom_io.series import load_series
    from dicom_io.sr import build_report
    from tests.helpers.results import (
        PRIVATE_SCHEME_WARNING, UNET, asymmetric_labels, dciodvfy, finding_for, uids_for, write_series,
    )

    labels = asymmetric_labels()
    series = load_series(write_series(tmp_path / "mr", labels))
    uids = uids_for(series)
    flags = ("levels_unconfirmed", "endplate_fit_poor:L1")
    seg = build_segmentation(series, labels, UNET, uids, flags=flags)
    sr = build_report(series, finding_for(series, flags=flags), uids, seg)
    for kind, ds in (("seg", seg), ("sr", sr)):
        ds.save_as(tmp_path / f"{kind}.dcm", enforce_file_format=True)
    errors, warnings = dciodvfy(tmp_path / "seg.dcm")
    assert errors == [] and warnings == []
    errors, warnings = dciodvfy(tmp_path / "sr.dcm")
    assert errors == [] and all(PRIVATE_SCHEME_WARNING in w for w in warnings)

    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    by_label = {str(s.SegmentLabel): s for s in seg.SegmentSequence}
    assert set(by_label) == {"L1 (unconfirmed)", "S1 / sacrum (unconfirmed)", "Spinal canal"}
    assert "not confirmed" in str(by_label["L1 (unconfirmed)"].SegmentDescription)
    assert "SegmentDescription" not in by_label["Spinal canal"]

    sr = hd.sr.srread(tmp_path / "sr.dcm")
    [group] = sr.content.get_image_measurement_groups()
    flags_in_sr = [e.value.value for e in group.get_qualitative_evaluations(name=codes.QUALITY_FLAG)]
    assert flags_in_sr == list(flags)
    assert "Flag: Levels unconfirmed: S1 cut by the image edge, may be off" in [
        str(i.TextValue) for i in group[0].ContentSequence if i.ValueType == "TEXT"]
    plain = build_segmentation(series, labels, UNET, uids)  # no flag: the labels as before
    assert {str(s.SegmentLabel) for s in plain.SegmentSequence} == {"L1", "S1 / sacrum", "Spinal canal"}
