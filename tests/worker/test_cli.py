"""The installed `lumbarnode` command, run as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.helpers.node import LUMBARNODE
from tests.helpers.tools import dciodvfy_errors


def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(LUMBARNODE), *args], capture_output=True, text=True, timeout=300)
    if ok:
        assert result.returncode == 0, result.stderr
    return result


def test_version():
    from importlib.metadata import version

    assert run("--version").stdout.strip() == f"lumbarnode {version('lumbarnode')}"


@pytest.fixture(scope="module")
def phantom_study(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantom")
    run("phantom", "--out", str(out), "--lla", "47.5", "--seed", "3", "--size", "448x320",
        "--spacing", "0.6x0.9", "--slices", "13")
    return out


def test_phantom_writes_valid_dicom_and_its_ground_truth(phantom_study):
    truth = json.loads((phantom_study / "truth.json").read_text())
    assert truth["lla_deg"] == pytest.approx(47.5)
    assert truth["class"] == "normal"
    files = sorted((phantom_study / "dicom").glob("*.dcm"))
    assert len(files) == truth["instances"] == 13
    for path in (files[0], files[len(files) // 2]):
        assert dciodvfy_errors(path) == []
    ds = pydicom.dcmread(files[0])
    assert (ds.Modality, ds.SOPClassUID, ds.BodyPartExamined) == ("MR", "1.2.840.10008.5.1.4.1.1.4", "LSPINE")
    assert [float(x) for x in ds.PixelSpacing] == [0.6, 0.9]
    assert (ds.Rows, ds.Columns) == (448, 320)
    assert ds.StudyInstanceUID == truth["study_instance_uid"]
    labels = np.load(phantom_study / "labels.npz")["labels"]
    assert labels.shape == (13, 448, 320)


def test_phantom_is_deterministic(phantom_study, tmp_path):
    run("phantom", "--out", str(tmp_path), "--lla", "47.5", "--seed", "3", "--size", "448x320",
        "--spacing", "0.6x0.9", "--slices", "13")
    for name in ("IM0001.dcm", "IM0007.dcm"):
        assert (tmp_path / "dicom" / name).read_bytes() == (phantom_study / "dicom" / name).read_bytes()


def test_phantom_class_follows_the_rule(tmp_path):
    for lla, expected in [(30, "hypolordosis"), (60, "hyperlordosis")]:
        run("phantom", "--out", str(tmp_path / str(lla)), "--lla", str(lla), "--slices", "3")
        assert json.loads((tmp_path / str(lla) / "truth.json").read_text())["class"] == expected


def test_phantom_refuses_a_field_of_view_too_small_for_the_spine(tmp_path):
    result = run("phantom", "--out", str(tmp_path), "--size", "160", "--spacing", "0.5x0.5", ok=False)
    assert result.returncode == 2 and "phantom:" in result.stderr


def test_inspect_describes_the_phantom(phantom_study):
    out = run("inspect", str(phantom_study / "dicom")).stdout
    assert "sagittal" in out
    assert "13 slices x 448 rows x 320 cols" in out
    assert "0.6 x 0.9 mm in-plane (row x col)" in out
    assert "slices every 4.4 mm" in out
    truth = json.loads((phantom_study / "truth.json").read_text())
    assert truth["series_instance_uid"] in out and truth["study_instance_uid"] in out
    info = json.loads(run("inspect", "--json", str(phantom_study / "dicom")).stdout)
    assert info["shape"] == {"slices": 13, "rows": 448, "cols": 320}
    assert info["pixel_spacing_mm"] == [0.6, 0.9]
    assert len(info["sop_instance_uids"]) == 13


def test_inspect_prints_the_reason_for_a_refusal(phantom_study, tmp_path):
    for path in sorted((phantom_study / "dicom").glob("*.dcm"))[:3]:
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]  # axial
        ds.save_as(tmp_path / path.name)
    result = run("inspect", str(tmp_path), ok=False)
    assert result.returncode == 2
    assert result.stdout.startswith("refused (not_sagittal): slices are axial")
    refusal = json.loads(run("inspect", "--json", str(tmp_path), ok=False).stdout)
    assert refusal["refused"] == "not_sagittal"


def test_wrap_and_inspect_a_real_volume(shared_data, tmp_path):
    run("wrap", str(shared_data / "fastmonai-t2-volume" / "img.nii.gz"), "--out", str(tmp_path))
    out = run("inspect", str(tmp_path / "dicom")).stdout
    assert "sagittal" in out and "16 slices x 400 rows x 400 cols" in out
    assert "0.78 x 0.78 mm in-plane" in out and "slices every 4.4 mm" in out


def test_wrap_keeps_per_level_labels(shared_data, tmp_path):
    run("wrap", str(shared_data / "myosegmentum-vb3" / "01.npz"), "--out", str(tmp_path))
    labels = np.load(tmp_path / "labels.npz")["labels"]
    assert labels.shape == (20, 224, 224) and {20, 21, 22, 23, 24} <= set(np.unique(labels))
    assert "20 slices x 224 rows x 224 cols" in run("inspect", str(tmp_path / "dicom")).stdout


def test_demo_plays_a_pacs_against_the_node_and_stops_cleanly(tmp_path):
    from dicom_io.codes import flag_meaning

    out = run("demo", "--out", str(tmp_path)).stdout
    # The study is sent once the networks are loaded, so the job never waits for TensorFlow.
    assert out.index("inference worker ready") < out.index("PACS -> node:")
    assert "model_load 0.00" in out
    assert "PACS -> node: 16 instances sent, statuses all success" in out
    # Every flag with its meaning (the SR's and the admin page's sentence), and where to look.
    flags = out.split("\nflags: ")[1].split("\nstages")[0].splitlines()[1:]
    for line in flags:
        code, meaning = line.strip().split(": ", 1)
        assert meaning == flag_meaning(code)
    assert "to look at the results:" in out and "lumbarnode jobs show 1" in out and "/jobs/1" in out
    lla = float(out.split("LLA ")[1].split(" deg")[0])
    near = [t for t in (39, 53) if abs(lla - t) < 2.5]
    assert ("borderline: " in out) == bool(near)
    if near:
        assert f"{abs(lla - near[0]):.1f} deg from the {near[0]} deg threshold" in out
    assert "job 1: done  LLA " in out and "stages (s): quiet_period" in out
    for kind in ("SEG", "SR ", "OT "):
        assert f"received at the PACS: {kind}" in out
    assert "node stopped (exit code 0)" in out
    assert len(list((tmp_path / "pacs").rglob("*.dcm"))) == 3
    assert list((tmp_path / "node" / "results").glob("job-1/overlay.png"))
