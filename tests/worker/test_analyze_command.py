"""`lumbarnode analyze` plumbing: the JSON contract, refusals, exit codes, mapping back to the
input's own pixels. The accuracy of the shipped networks is measured by `evaluate`, not here;
these tests use networks with freshly initialised weights written by the test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dicom_io.geometry import InPlaneFlip
from dicom_io.mr_writer import MRSeriesInfo, write_mr_series
from dicom_io.series import load_series
from pipeline.analysis import analyze
from pipeline.inference import ModelInfo
from pipeline.labels import LEVEL_VALUES
from pipeline.synthetic.phantom import PhantomParams, make_phantom
from tests.helpers.label_maps import classes_of
from worker import method, rendering

LUMBARNODE = Path(sys.executable).with_name("lumbarnode")
CONTRACT_KEYS = {"lla_deg", "class", "cnn_class", "cnn_probabilities", "flags", "slice_index", "vertebrae", "model"}


@pytest.fixture(scope="module")
def untrained_models(tmp_path_factory) -> Path:
    """A model folder with untrained U-Net and Deteclordose weights and their descriptions.

    The U-Net's output bias favours background, so that it finds no spine whatever its
    random initial weights (left as they were, it now and then painted vertebrae on noise)."""
    from pipeline.networks import (
        LORDOSIS_CLASSES,
        SEGMENTATION_CLASSES,
        build_deteclordose,
        build_unet,
    )

    folder = tmp_path_factory.mktemp("models")
    unet = build_unet(input_size=64)
    kernel, bias = unet.layers[-1].get_weights()
    unet.layers[-1].set_weights([kernel, np.array([20.0, -20.0, -20.0, -20.0], bias.dtype)])
    for name, model, size, classes in [
        ("unet_4class", unet, 64, SEGMENTATION_CLASSES),
        ("deteclordose", build_deteclordose(input_size=64), 64, LORDOSIS_CLASSES),
    ]:
        model.save_weights(folder / f"{name}.weights.h5")
        (folder / f"{name}.json").write_text(json.dumps(
            {"name": name, "version": "test", "architecture": model.name, "input_size": size, "classes": classes}))
    return folder


def run(*args: str, env_models: Path) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ, LUMBARNODE_MODEL_DIR=str(env_models))
    return subprocess.run([str(LUMBARNODE), "analyze", *args], capture_output=True, text=True, env=env, timeout=300)


def test_unreadable_input_is_refused_with_one_line_and_a_json_object(untrained_models, tmp_path):
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"not dicom")
    plain = run(str(bad), env_models=untrained_models)
    assert plain.returncode == rendering.EXIT_REFUSED
    assert plain.stdout.strip().count("\n") == 0 and plain.stdout.startswith("refused: malformed_file")
    result = json.loads(run(str(bad), "--json", env_models=untrained_models).stdout)
    assert CONTRACT_KEYS <= set(result) and result["lla_deg"] is None and "broken.dcm" in result["refused"]


def test_no_spine_found_is_a_refusal_naming_the_model(untrained_models, tmp_path):
    import cv2

    image = tmp_path / "noise.png"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 255, (96, 80), dtype=np.uint8))
    done = run(str(image), "--json", "--pixel-spacing", "0.8", "0.8", env_models=untrained_models)
    result = json.loads(done.stdout)
    assert done.returncode == rendering.EXIT_REFUSED and result["refused"].startswith("no spine found")
    assert result["model"]["name"] == "unet_4class" and len(result["model"]["sha256"]) == 64


def test_missing_weights_point_to_the_training_command(tmp_path):
    done = run(str(tmp_path), env_models=tmp_path)
    assert done.returncode == rendering.EXIT_REFUSED and "make train" in done.stderr


def test_results_are_reported_on_the_pixels_of_the_input_slice(tmp_path):
    """A series stored transposed and mirrored: points and mask come back in its own layout."""
    phantom = make_phantom(PhantomParams(lla_deg=44.0, seed=4, slices=3))
    flip = InPlaneFlip(transpose=True, flip_rows=False, flip_cols=True)
    write_mr_series(np.clip(phantom.image, 0, 4095), (0.9, 0.9), phantom.slice_positions_mm,
                    MRSeriesInfo(key="analyze-flip"), tmp_path, in_plane=flip)
    series = load_series(tmp_path)
    analysis = analyze(classes_of(phantom.labels), (0.9, 0.9))
    slices = method.Slices.of(series, (0.9, 0.9))
    model = ModelInfo("unet_4class", "test", "0" * 64, "unet", 256, ("background", "vertebra", "disc", "canal"))
    measured = method.SeriesResult(method.Outcome.MEASURED, method.ModelsUsed(model), analysis=analysis, slices=slices)

    result = rendering.as_json(measured)
    assert CONTRACT_KEYS <= set(result) and result["class"] == "normal"
    mask = method.mask_on_source(measured)
    stored = flip.to_source(phantom.labels[analysis.slice_index])
    assert mask.shape == stored.shape == (320, 320)
    r, c = (int(round(v)) for v in result["vertebrae"]["L3"]["centroid"])
    assert mask[r, c] == LEVEL_VALUES["L3"] and stored[r, c] == LEVEL_VALUES["L3"]
    assert set(np.unique(mask)) <= {0, 11, 12, 19, 20, 21, 22, 23, 24, 25, 26, 30, 40}
    assert result["sop_instance_uid"] == series.slices[analysis.slice_index].sop_instance_uid
    picture = method.overlay_bgr(measured)
    assert picture.ndim == 3 and picture.shape[2] == 3 and min(picture.shape[:2]) >= 320
