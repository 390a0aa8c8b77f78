"""The weights in models/: present, described, hashed as the model card says, small, and
measuring synthetic studies they never saw through the real command line. Accuracy on the
validation patients is measured by `lumbarnode evaluate` and written in the model card."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.classify import classify_lla
from pipeline.inference import ModelInfo, sha256_of
from worker.settings import Settings

MODELS = Settings().model_dir
LUMBARNODE = Path(sys.executable).with_name("lumbarnode")
MASK_VALUES = {0, 11, 12, 19, 20, 21, 22, 23, 24, 25, 26, 30, 40}


@pytest.mark.parametrize("name", ["unet_4class", "deteclordose"])
def test_shipped_weights_are_described_and_hashed_in_the_model_card(name):
    weights = MODELS / f"{name}.weights.h5"
    info = ModelInfo.read(weights)
    description = json.loads((MODELS / f"{name}.json").read_text())
    assert info.name == name and description["sha256"] == info.sha256 == sha256_of(weights)
    assert info.sha256 in (MODELS / "MODEL_CARD.md").read_text()
    assert description["training_command"].startswith("lumbarnode train ")


def test_the_shipped_unet_can_be_re_evaluated_on_its_validation_patients():
    """models/unet_4class.run holds what `lumbarnode evaluate` needs: the data recipe, the split,
    and the way to the shipped weights (not to a training folder that is gone)."""
    run = MODELS / "unet_4class.run"
    config, split = (json.loads((run / name).read_text()) for name in ("config.json", "split.json"))
    assert (run / config["result"]["weights_f16"]).resolve() == (MODELS / "unet_4class.weights.h5").resolve()
    assert config["task"] == "segmentation" and config["data"]["kwargs"] is not None
    assert split["validation"] and not set(split["validation"]) & set(split["train"])


def test_shipped_weights_are_small():
    assert sum(p.stat().st_size for p in MODELS.glob("*.weights.h5")) < 20 * 2**20


@pytest.mark.parametrize(("lla", "seed", "spacing", "size"), [
    (34.0, 901, "0.9x0.9", "320"),     # hypolordosis, square pixels
    (47.0, 902, "0.6x0.9", "448x320"),  # normal, anisotropic pixels
    (61.0, 903, "0.8x0.8", "384x384"),  # hyperlordosis
])
def test_analyze_measures_unseen_synthetic_studies(tmp_path, lla, seed, spacing, size):
    """Seeds far from the training phantoms (1..48) and the classifier's (2); T2 contrast."""
    study = tmp_path / "study"
    subprocess.run([str(LUMBARNODE), "phantom", "--out", str(study), "--lla", str(lla), "--seed", str(seed),
                    "--spacing", spacing, "--size", size, "--slices", "5"], check=True, capture_output=True)
    truth = json.loads((study / "truth.json").read_text())
    mask_png = tmp_path / "mask.png"
    done = subprocess.run([str(LUMBARNODE), "analyze", str(study / "dicom"), "--json", "--mask-out", str(mask_png)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert abs(result["lla_deg"] - truth["lla_deg"]) <= 3.0, result["flags"]
    assert result["class"] == classify_lla(result["lla_deg"])
    assert {"L1", "L2", "L3", "L4", "L5", "S1"} <= set(result["vertebrae"])
    assert result["model"]["sha256"] == sha256_of(MODELS / "unet_4class.weights.h5")
    mask = cv2.imread(str(mask_png), cv2.IMREAD_UNCHANGED)
    assert set(np.unique(mask)) <= MASK_VALUES and (mask == 20).any() and (mask == 26).any()
    # Levels named right: the predicted L1..S1 lie on the same levels of the phantom's labels
    # (on the reference slice that matches best: the mask is of one slice, in its stored layout).
    reference = np.load(study / "labels.npz")["labels"]
    levels = [20, 21, 22, 23, 24, 26]
    agree = [np.mean([(ref[mask == v] == v).mean() for v in levels]) for ref in reference]
    assert max(agree) >= 0.8, agree
