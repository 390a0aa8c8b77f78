"""Issue 20, point 1: one code path. A real slice gets the same segmentation and the same
answer whether it is given to `analyze` as a PNG, as a DICOM series, or measured by
`lumbarnode evaluate`'s own inference (training.evaluate), with the shipped weights; and the
`analyze` command prints what its in-process call (bench/accuracy) returns."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dicom_io.volumes import load_real, wrap_as_dicom
from worker import analyze, rendering
from worker.method import Models
from worker.settings import Settings

LUMBARNODE = Path(sys.executable).with_name("lumbarnode")
SLICE = "spider-t2-slices/images/136_65.png"  # a slice that analyze once refused as "no spine found"


@pytest.fixture(scope="module")
def models():
    return Models.load(Settings.from_env())


def test_png_dicom_and_evaluate_segment_a_real_slice_alike(shared_data, models, tmp_path):
    from training.evaluate import load_unet, predict_segmentation

    png = shared_data / SLICE
    settings = Settings.from_env()
    as_png = analyze.run(png, models, settings)
    wrap_as_dicom(load_real(png), tmp_path / "dicom")
    as_dicom = analyze.run(tmp_path / "dicom", models, settings)
    image = load_real(png).image[0]
    [as_evaluated] = predict_segmentation(load_unet(settings.first_network_weights()), [image])

    assert as_png.class_maps is not None and as_dicom.class_maps is not None  # segmented, not refused
    np.testing.assert_array_equal(as_png.class_maps[0], as_dicom.class_maps[0])
    # evaluate's model.predict and the worker's compiled call round differently in the last bits
    agreement = float(np.mean(as_png.class_maps[0] == as_evaluated))
    assert agreement > 0.999, f"analyze and evaluate agree on {agreement:.4%} of the pixels"
    png_json, dicom_json = rendering.as_json(as_png), rendering.as_json(as_dicom)
    assert png_json["vertebrae"] == dicom_json["vertebrae"]
    assert png_json["lla_deg"] == dicom_json["lla_deg"]
    # the PNG has no spacing (flagged as assumed); otherwise the answers are the same
    assert [f for f in png_json["flags"] if f != "pixel_spacing_assumed_1mm"] == dicom_json["flags"]


def test_the_command_answers_what_its_in_process_call_returns(shared_data, models):
    png = shared_data / SLICE
    done = subprocess.run([str(LUMBARNODE), "analyze", str(png), "--json"], capture_output=True, text=True, timeout=300)
    analysed = analyze.run(png, models, Settings.from_env())
    assert done.returncode == rendering.exit_code(analysed)
    in_process = rendering.as_json(analysed)
    printed = json.loads(done.stdout)
    assert printed["flags"] == in_process["flags"] and printed["vertebrae"] == in_process["vertebrae"]
    assert printed.get("segmentation_confidence") == pytest.approx(in_process.get("segmentation_confidence"), abs=1e-4)
    assert done.returncode == rendering.EXIT_NOT_MEASURED  # a spine without a sacrum in view is no refusal


def test_the_accuracy_bench_judges_a_real_volume_on_the_slice_analyze_chose(shared_data, models, tmp_path):
    """bench/accuracy: a per-level volume wrapped as DICOM, analysed as a series, judged against
    its own labels on the slice analyze measured (Chu 02, a validation patient)."""
    from bench.accuracy import per_level_volume, summarise

    case = per_level_volume(shared_data / "chu2015-vb2" / "02.npz", models, Settings.from_env(), tmp_path)
    assert case["exit"] == rendering.EXIT_MEASURED and case["identified"], case
    assert abs(case["l1_l5_error_deg"]) < 5.0, case
    assert np.sign(case["l1_l5_measured_deg"]) == np.sign(case["l1_l5_reference_deg"])
    summary = summarise([case, {**case, "item": "chu2015-vb2/x.npz", "identified": False}])
    assert summary["chu2015-vb2"]["volumes"] == 2 and summary["chu2015-vb2"]["identified"] == 1


def test_evaluate_with_flip_segments_as_analyze_with_the_mirrored_pass(shared_data, tmp_path):
    """`lumbarnode evaluate --flip` measures the opt-in configuration "unet_4class,unet_4class:flip"
    (models/MODEL_CARD.md compares both ways): the same segmentation as analyze with it."""
    from dataclasses import replace

    from training.evaluate import load_unet, predict_segmentation

    settings = replace(Settings.from_env(), segmentation_model="unet_4class,unet_4class:flip")
    png = shared_data / SLICE
    with_mirror = analyze.run(png, Models.load(settings), settings)
    unet, image = load_unet(settings.first_network_weights()), load_real(png).image[0]
    [evaluated] = predict_segmentation(unet, [image], flip=True)
    [plain] = predict_segmentation(unet, [image])
    assert with_mirror.class_maps is not None
    agreement = float(np.mean(with_mirror.class_maps[0] == evaluated))
    assert agreement > 0.999, f"analyze and evaluate --flip agree on {agreement:.4%} of the pixels"
    assert float(np.mean(plain != evaluated)) > 0.0005  # the mirrored pass changed something
    assert rendering.as_json(with_mirror)["model"]["name"] == "unet_4class with mirrored pass"
