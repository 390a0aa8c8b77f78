"""training/measurement.py: identification, L1-L5 angle and synthetic LLA agreement, scored on
predictions we control (the reference masks themselves, and broken copies of them)."""

from __future__ import annotations

import dataclasses
import hashlib

import cv2
import numpy as np
import pytest

from pipeline.labels import LEVEL_VALUES
from tests.helpers.label_maps import disc_drawn_as_bone
from training import datasets as ds
from training import measurement


@pytest.fixture(scope="module")
def phantom_slices(tmp_path_factory) -> list[ds.Sample]:
    return ds.load_phantoms(3, seed=11, slices=3, lla_range=(20.0, 70.0), cache_dir=tmp_path_factory.mktemp("cache"))


def test_agreement_figures():
    result = measurement.agreement([10.0, 20.0, 30.0, 40.0], [11.0, 19.0, 33.0, 40.0])
    assert result["n"] == 4
    assert result["bias_deg"] == pytest.approx(0.75)
    assert result["mae_deg"] == pytest.approx(1.25)
    assert result["median_abs_error_deg"] == pytest.approx(1.0)
    assert result["max_abs_error_deg"] == pytest.approx(3.0)
    sd = np.std([1.0, -1.0, 3.0, 0.0], ddof=1)
    assert result["loa_high_deg"] == pytest.approx(0.75 + 1.96 * sd)
    assert measurement.agreement([], []) == {"n": 0}
    low, high = result["median_abs_error_ci95_deg"]
    assert low <= result["median_abs_error_deg"] <= high


def test_median_interval_narrows_with_more_cases_and_resamples_patients_whole():
    rng = np.random.default_rng(1)
    few, many = np.abs(rng.normal(0, 2, 20)), np.abs(rng.normal(0, 2, 500))
    few_low, few_high = measurement.median_interval(few)
    many_low, many_high = measurement.median_interval(many)
    assert many_high - many_low < few_high - few_low
    # three identical slices per patient carry no more information than one slice per patient
    per_patient = np.abs(rng.normal(0, 2, 8))
    slices, patients = np.repeat(per_patient, 3), np.repeat([f"p{k}" for k in range(8)], 3)
    assert measurement.median_interval(slices, patients) == measurement.median_interval(per_patient)
    assert measurement.median_interval(slices) != measurement.median_interval(per_patient)


def test_identification_is_right_on_the_reference_and_wrong_without_the_sacrum(phantom_slices):
    truth = [s.mask for s in phantom_slices]
    right = measurement.identification(phantom_slices, truth)
    assert right["slices"] >= 3 and right["accuracy"] == 1.0 and not right["wrong"]

    no_sacrum = []
    for s in phantom_slices:
        pred = s.mask.copy()
        pred[s.extra["level_labels"] == LEVEL_VALUES["S1"]] = ds.BACKGROUND
        no_sacrum.append(pred)
    wrong = measurement.identification(phantom_slices, no_sacrum)
    assert wrong["slices"] == right["slices"] and wrong["correct"] < wrong["slices"]
    assert wrong["wrong"] and all(e["errors"] for e in wrong["wrong"])
    assert right["silent"] == 0 and wrong["silent"] == 0  # a missing sacrum is flagged: s1_not_found

    # the L4-L5 disc drawn as bone: wrong, and said so only by possible_fused_bodies
    joined = [disc_drawn_as_bone(s.extra["level_labels"], s.mask, "L4", "L5") for s in phantom_slices]
    fused = measurement.identification(phantom_slices, joined)
    assert fused["correct"] == 0 and fused["silent"] == 0
    assert all(any(f.startswith("possible_fused_bodies") for f in e["flags"]) for e in fused["wrong"])


def _as_real(s: ds.Sample) -> ds.Sample:
    return dataclasses.replace(s, source=ds.MYO, patient_id=f"{ds.MYO}:{s.item}", lla_deg=None)


def _turned(mask: np.ndarray, degrees: float) -> np.ndarray:
    rows, cols = mask.shape
    turn = cv2.getRotationMatrix2D((cols / 2, rows / 2), degrees, 1.0)
    return cv2.warpAffine(mask, turn, (cols, rows), flags=cv2.INTER_NEAREST)


def test_l1_l5_angle_against_reference_masks(phantom_slices):
    real = [_as_real(s) for s in phantom_slices]
    same = measurement.l1_l5_angle(real, [s.mask for s in real])
    # identify() opens the masks and keeps what lies in front of the canal: nearly the same outline
    assert same["n"] >= 3 and same["max_abs_error_deg"] < 0.5
    # per endplate as well: each level's direction is where an angle's error would come from
    assert set(same["endplate_tilt_median_abs_error_deg"]) == {"L1", "L2", "L3", "L4", "L5"}
    assert max(same["endplate_tilt_median_abs_error_deg"].values()) < 0.5
    assert list(same["median_abs_error_per_source_deg"]) == [ds.MYO]
    assert same["median_abs_error_per_source_deg"][ds.MYO] == pytest.approx(same["median_abs_error_deg"])
    # the whole prediction turned by 4 deg: the L1-L5 angle cannot see it, each endplate does
    turned = measurement.l1_l5_angle(real, [_turned(s.mask, 4.0) for s in real])
    assert turned["n"] >= 3 and turned["max_abs_error_deg"] < 1.0
    assert all(3.0 < v < 5.0 for v in turned["endplate_tilt_median_abs_error_deg"].values())
    assert 5.0 < np.median([c["reference_deg"] for c in same["cases"]]) < 80.0

    empty = measurement.l1_l5_angle(real, [np.zeros_like(s.mask) for s in real])
    assert empty["n"] == 0 and len(empty["not_measured"]) == same["n"]

    # phantoms are skipped: their angle is checked as L1-S1 on whole series instead
    assert measurement.l1_l5_angle(phantom_slices, [s.mask for s in phantom_slices])["n"] == 0


def test_synthetic_lla_through_the_series_analysis(tmp_path):
    samples = ds.load_phantoms(3, seed=7, slices=3, lla_range=(20.0, 70.0), cache_dir=tmp_path)
    truth = {hashlib.sha1(s.image.tobytes()).hexdigest(): s.mask for s in samples}

    def perfect(images):  # one-hot class probabilities of the reference masks
        return [np.eye(4, dtype=np.float32)[truth[hashlib.sha1(i.tobytes()).hexdigest()]] for i in images]

    result = measurement.synthetic_lla(perfect, count=3, seed=7, slices=3, lla_range=(20.0, 70.0), cache_dir=tmp_path)
    assert result["series"] == 3 and result["measured"] == 3
    assert result["median_abs_error_deg"] <= 1.0
    assert result["measurement_alone_on_reference_masks"]["median_abs_error_deg"] <= 1.0

    def blind(images):  # all background
        return [np.eye(4, dtype=np.float32)[np.zeros(i.shape, int)] for i in images]

    blind = measurement.synthetic_lla(blind, count=3, seed=7, slices=3, lla_range=(20.0, 70.0), cache_dir=tmp_path)
    assert blind["measured"] == 0 and len(blind["not_measured"]) == 3
    assert all("l1_not_found" in c["flags"] for c in blind["not_measured"])


def test_spread_against_error_tells_a_spread_that_follows_the_error_from_one_that_does_not():
    """evaluate --member/--flip: is the ensemble's spread an uncertainty? Cases built so that the
    passes disagree exactly where the combined angle is wrong, and then independently of it."""
    errors = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
    combined = {"cases": [{"item": f"s{k}", "measured_deg": 30.0 + e, "reference_deg": 30.0}
                          for k, e in enumerate(errors)]}

    def passes(spreads):
        return [{"cases": [{"item": f"s{k}", "measured_deg": 30.0} for k in range(6)], "n": 6, "median_abs_error_deg": 1.0},
                {"cases": [{"item": f"s{k}", "measured_deg": 30.0 + d} for k, d in enumerate(spreads)], "n": 6,
                 "median_abs_error_deg": 2.0}]

    following = measurement.spread_against_error(combined, passes([0.1, 0.5, 1.0, 3.0, 7.0, 20.0]))
    assert following["n"] == 6 and following["rank_correlation"] == pytest.approx(1.0)
    assert following["within_limit"] == {"slices": 4, "median_abs_error_deg": 1.5}
    assert following["beyond_limit"] == {"slices": 2, "median_abs_error_deg": 12.0}
    unrelated = measurement.spread_against_error(combined, passes([20.0, 0.1, 7.0, 0.5, 3.0, 1.0]))
    assert abs(unrelated["rank_correlation"]) < 0.5
    # a slice one pass did not measure is left out, not counted as agreement
    missing = passes([0.1, 0.5, 1.0, 3.0, 7.0, 20.0])
    missing[1]["cases"] = missing[1]["cases"][:-1]
    assert measurement.spread_against_error(combined, missing)["n"] == 5
