"""Issue 20, point 4: an ensemble of U-Nets, its probabilities averaged, and the spread of the
members' own angles reported with every angle (and flagged when too wide)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.analysis import AnalysisConfig, analyze, with_member_angles
from pipeline.synthetic.phantom import PhantomParams, make_phantom
from tests.helpers.label_maps import classes_of

LUMBARNODE = Path(sys.executable).with_name("lumbarnode")
MODELS = Path(__file__).resolve().parents[2] / "models"


def one_hot(classes: np.ndarray) -> np.ndarray:
    return np.eye(4, dtype=np.float32)[classes]


def test_members_that_agree_give_no_spread_and_members_that_differ_are_flagged():
    spacing = (0.9, 0.9)
    steep = classes_of(make_phantom(PhantomParams(lla_deg=47.0, seed=5, slices=5)).labels)
    flat = classes_of(make_phantom(PhantomParams(lla_deg=37.0, seed=5, slices=5)).labels)
    alone = analyze(steep, spacing, one_hot(steep))
    agreeing = with_member_angles(alone, [one_hot(steep), one_hot(steep)], spacing)
    assert agreeing.member_lla_deg == (alone.lla_deg, alone.lla_deg) and agreeing.lla_spread_deg == 0.0
    assert "ensemble_members_disagree" not in agreeing.flags
    differing = with_member_angles(alone, [one_hot(steep), one_hot(flat)], spacing)
    assert differing.lla_spread_deg == pytest.approx(10.0, abs=1.5)
    assert "ensemble_members_disagree" in differing.flags
    tolerant = with_member_angles(alone, [one_hot(steep), one_hot(flat)], spacing, AnalysisConfig(max_member_spread_deg=12))
    assert "ensemble_members_disagree" not in tolerant.flags
    assert with_member_angles(alone, [one_hot(steep)], spacing) == alone  # one member: nothing added


@pytest.fixture(scope="module")
def two_member_models(tmp_path_factory) -> Path:
    """The shipped U-Net twice (same weights under a second name) and the classifier."""
    folder = tmp_path_factory.mktemp("models")
    for name in ("unet_4class", "deteclordose"):
        for suffix in (".weights.h5", ".json"):
            shutil.copyfile(MODELS / f"{name}{suffix}", folder / f"{name}{suffix}")
    shutil.copyfile(MODELS / "unet_4class.weights.h5", folder / "unet_4class_twin.weights.h5")
    shutil.copyfile(MODELS / "unet_4class.json", folder / "unet_4class_twin.json")
    return folder


def analyze_json(series: Path, env: dict[str, str]) -> dict:
    done = subprocess.run([str(LUMBARNODE), "analyze", str(series), "--json"], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **env})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_analyze_with_an_ensemble_reports_each_members_angle_and_their_spread(two_member_models, tmp_path):
    done = subprocess.run([str(LUMBARNODE), "phantom", "--out", str(tmp_path), "--seed", "3", "--slices", "5"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    single = analyze_json(tmp_path / "dicom", {"LUMBARNODE_MODEL_DIR": str(two_member_models)})
    both = analyze_json(tmp_path / "dicom", {"LUMBARNODE_MODEL_DIR": str(two_member_models),
                                             "LUMBARNODE_SEGMENTATION_MODEL": "unet_4class,unet_4class_twin"})
    assert "lla_spread_deg" not in single and "members" not in single["model"]
    assert both["lla_deg"] == pytest.approx(single["lla_deg"], abs=0.01)  # the average of twins is either
    assert both["lla_members_deg"] == [single["lla_deg"], single["lla_deg"]] and both["lla_spread_deg"] == 0.0
    assert [m["sha256"] for m in both["model"]["members"]] == [single["model"]["sha256"]] * 2
    assert both["model"]["sha256"] != single["model"]["sha256"]  # another model, other result UIDs
    assert "ensemble_members_disagree" not in both["flags"]


def test_process_with_an_ensemble_writes_the_spread_into_the_sr(two_member_models, tmp_path):
    import highdicom as hd
    import pydicom

    from dicom_io import codes

    done = subprocess.run([str(LUMBARNODE), "phantom", "--out", str(tmp_path / "study"), "--seed", "3", "--slices", "5"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    env = {**os.environ, "LUMBARNODE_MODEL_DIR": str(two_member_models),
           "LUMBARNODE_SEGMENTATION_MODEL": "unet_4class,unet_4class_twin"}
    done = subprocess.run([str(LUMBARNODE), "process", str(tmp_path / "study" / "dicom"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    sr = hd.sr.srread(tmp_path / "out" / "sr.dcm")
    [group] = sr.content.get_image_measurement_groups()
    [spread] = group.get_measurements(name=codes.LLA_SPREAD)
    assert spread.value == 0.0 and spread.unit.value == "deg"
    texts = [str(i.TextValue) for i in group[0].ContentSequence if i.ValueType == "TEXT"]
    assert "Spread across 2 segmentation passes: 0.0 deg" in texts
    # OHIF takes the first NUM for its Cobb angle: the angle stays first
    assert [m.name.value for m in group.get_measurements()][0] == "285285000"
    assert pydicom.dcmread(tmp_path / "out" / "sr.dcm").SOPInstanceUID


def test_package_adds_a_member_of_the_shipped_recipe_and_lists_it_in_the_card(tmp_path):
    from training.package import MEMBERS_BEGIN, add_member

    models = tmp_path / "models"
    shutil.copytree(MODELS / "unet_4class.run", models / "unet_4class.run")
    shutil.copyfile(MODELS / "MODEL_CARD.md", models / "MODEL_CARD.md")
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    config = json.loads((MODELS / "unet_4class.run" / "config.json").read_text())
    config.update(seed=7, result={"weights_f16": "best.f16.weights.h5"})
    (run / "config.json").write_text(json.dumps(config))
    shutil.copyfile(MODELS / "unet_4class.run" / "split.json", run / "split.json")
    shutil.copyfile(MODELS / "unet_4class.weights.h5", run / "best.f16.weights.h5")
    (run / "eval" / "metrics.json").write_text(json.dumps({
        "mean_over_patients": {"vertebra": {"dice": 0.95}},
        "identification": {"correct": 125, "slices": 128, "accuracy": 125 / 128},
        "l1_l5_angle_real": {"n": 47, "median_abs_error_deg": 2.5, "median_abs_error_ci95_deg": [1.5, 4.0]}}))

    info = add_member(run, models, "1.2.0", "2026-12-03")
    assert info["name"] == "unet_4class_seed7" and info["seed"] == 7
    assert (models / "unet_4class_seed7.weights.h5").is_file() and (models / "unet_4class_seed7.json").is_file()
    assert json.loads((models / "unet_4class_seed7.run" / "split.json").read_text())["validation"] == \
        json.loads((MODELS / "unet_4class.run" / "split.json").read_text())["validation"]
    add_member(run, models, "1.2.0", "2026-12-03")  # again: one section, one row
    card = (models / "MODEL_CARD.md").read_text()
    assert card.count(MEMBERS_BEGIN) == 1 and card.count("| `unet_4class_seed7` | 7 |") == 1
    assert "125/128 (97.7%)" in card and "2.50 (1.50..4.00), n = 47" in card
    assert card.startswith((MODELS / "MODEL_CARD.md").read_text().split("## Lordosis class")[0][:200])

    other = json.loads((run / "split.json").read_text())
    other["validation"] = other["validation"][1:]
    (run / "split.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="other patients"):
        add_member(run, models, "1.2.0", "2026-12-03")


def test_a_flip_member_reuses_the_loaded_network_on_mirrored_slices():
    """Test-time augmentation: "unet_4class:flip" is the loaded U-Net again, on the slices
    mirrored anterior <-> posterior, its probabilities mirrored back."""
    from pipeline.inference import Ensemble, Mirrored

    weights = MODELS / "unet_4class.weights.h5"
    ensemble = Ensemble.load([weights, f"{weights}:flip"])
    plain, mirrored = ensemble.members
    assert isinstance(mirrored, Mirrored) and mirrored.segmenter is plain  # loaded once
    slices = np.random.default_rng(0).integers(0, 255, (2, 96, 80)).astype(np.float32)
    np.testing.assert_allclose(mirrored.probabilities(slices), plain.probabilities(slices[..., ::-1])[:, :, ::-1])
    assert ensemble.info.sha256 != Ensemble.load([weights, weights]).info.sha256  # a mirror is another member
    assert ensemble.info.name == "unet_4class with mirrored pass"


def test_the_members_and_their_mirrors_in_one_call_give_each_members_own_probabilities():
    """One traced call per batch runs every member (bench/ensemble.py: the cost); it gives what
    each member gives alone, mirrored members included."""
    from pipeline.inference import Ensemble

    weights = MODELS / "unet_4class.weights.h5"
    ensemble = Ensemble.load([weights, f"{weights}:flip"])
    slices = np.random.default_rng(1).integers(0, 4095, (11, 120, 96)).astype(np.float32)  # two batches
    together, alone = ensemble.member_probabilities(slices), ensemble.members_one_by_one(slices)
    assert len(together) == 2 and together[0].shape == (11, 120, 96, 4)
    for mine, theirs in zip(together, alone):
        np.testing.assert_allclose(mine, theirs, atol=2e-5)
    assert not np.allclose(together[0], together[1], atol=1e-3)  # the mirror is another opinion
