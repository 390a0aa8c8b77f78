"""Evaluation of what the radiologist reads: vertebra identification, the L1-L5 angle on real
volumes, and the L1-S1 LLA on synthetic series with exact truth.

Each figure runs the pipeline's own code (pipeline.identify, pipeline.cobb, pipeline.analysis)
on the U-Net's predictions, so it measures the method the worker ships, not a re-implementation.

  * Identification: on every validation slice whose reference labels show L1..L5 (per-level
    labels: phantoms, myosegmentum-vb3, chu2015-vb2), each of L1..L5 must be found and the
    predicted body given level Lk must lie mostly on the reference Lk.
  * L1-L5 angle (real): the Cobb angle between the superior endplates of L1 and L5, fitted by
    pipeline.cobb from the reference level masks and from the predicted, identified bodies.
    S1 is not labelled in any real subset, so this is the closest real-data check of the angle.
  * LLA (synthetic): fresh phantom series (a seed the training never saw), every slice
    segmented, slice chosen and angle measured by pipeline.analysis.analyze, exactly as the
    worker does; compared with the exact angle the phantom was built with. The same measurement
    on the reference masks is reported beside it (the error of the measurement alone).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from pipeline.analysis import analyze, superior_endplates
from pipeline.cobb import Endplate, cobb_angle_deg, fit_superior_endplate, signed_angle_deg, square_to_column_deg
from pipeline.identify import identify
from pipeline.labels import LEVEL_VALUES
from training import datasets as ds

LUMBAR = ("L1", "L2", "L3", "L4", "L5")
Segment = Callable[[Sequence[np.ndarray]], list[np.ndarray]]  # slices -> class probabilities on their grids


def agreement(reference: Sequence[float], measured: Sequence[float], groups: Sequence[str] | None = None) -> dict:
    """Bland-Altman (measured - reference): bias, SD, 95 % limits of agreement; MAE and median
    absolute error with a bootstrap 95 % interval (see median_interval)."""
    ref, mea = np.asarray(reference, float), np.asarray(measured, float)
    diff = mea - ref
    if len(diff) == 0:
        return {"n": 0}
    sd = float(diff.std(ddof=1)) if len(diff) > 1 else float("nan")
    bias = float(diff.mean())
    return {"n": int(len(diff)), "median_abs_error_deg": float(np.median(np.abs(diff))),
            "median_abs_error_ci95_deg": median_interval(np.abs(diff), groups),
            "mae_deg": float(np.abs(diff).mean()), "max_abs_error_deg": float(np.abs(diff).max()),
            "bias_deg": bias, "sd_deg": sd, "loa_low_deg": bias - 1.96 * sd, "loa_high_deg": bias + 1.96 * sd}


def median_interval(values: Sequence[float], groups: Sequence[str] | None = None, resamples: int = 4000,
                    seed: int = 0) -> list[float]:
    """Percentile-bootstrap 95 % interval of the median: how far the figure could move on another
    sample of the same size (40 synthetic series gave medians of 1.02 and 0.58 deg on two seeds).
    With groups (the patient of each slice), whole groups are resampled: slices of one patient
    are not independent, and resampling them singly would make the interval look narrower."""
    values = np.asarray(values, float)
    rng = np.random.default_rng(seed)
    if groups is None:
        draws = rng.integers(0, len(values), (resamples, len(values)))
        medians = np.median(values[draws], axis=1)
    else:
        members = [np.flatnonzero(np.asarray(groups) == g) for g in dict.fromkeys(groups)]
        picks = rng.integers(0, len(members), (resamples, len(members)))
        medians = np.array([np.median(values[np.concatenate([members[k] for k in row])]) for row in picks])
    return [float(v) for v in np.percentile(medians, [2.5, 97.5])]


def _shows_lumbar_levels(level_labels: np.ndarray | None) -> bool:
    return level_labels is not None and all((level_labels == LEVEL_VALUES[lv]).any() for lv in LUMBAR)


def _level_under(mask: np.ndarray, level_labels: np.ndarray) -> int | None:
    """The reference level value covering most of a predicted body (ignoring unlabelled pixels)."""
    values = level_labels[mask]
    values = values[values > 0]
    return int(np.bincount(values).argmax()) if len(values) else None


def identification(samples: Sequence[ds.Sample], predictions: Sequence[np.ndarray]) -> dict:
    """Share of slices showing L1..L5 on which all five are identified correctly, per source, and
    how many wrong slices carried no flag at all (`silent`: an error a radiologist is not warned of)."""
    per_source: dict[str, list[bool]] = {}
    wrong: list[dict] = []
    for s, pred in zip(samples, predictions):
        ref = s.extra.get("level_labels")
        if s.spacing_mm is None or not _shows_lumbar_levels(ref):
            continue
        found = identify(pred, s.spacing_mm)
        errors = {}
        for level in LUMBAR:
            body = found.bodies.get(level)
            got = None if body is None else _level_under(body.mask, ref)
            if got != LEVEL_VALUES[level]:
                errors[level] = "not found" if body is None else f"on reference value {got}"
        per_source.setdefault(s.source, []).append(not errors)
        if errors:
            wrong.append({"item": s.item, "errors": errors, "flags": list(found.flags)})
    total = [ok for oks in per_source.values() for ok in oks]
    return {
        "slices": len(total),
        "correct": int(sum(total)),
        "accuracy": float(np.mean(total)) if total else None,
        "per_source": {src: {"slices": len(oks), "accuracy": float(np.mean(oks))} for src, oks in per_source.items()},
        "silent": sum(not w["flags"] for w in wrong),
        "wrong": wrong,
    }


def _l1_l5_deg(endplates: dict[str, Endplate | None]) -> float | None:
    upper, lower = endplates.get("L1"), endplates.get("L5")
    return None if upper is None or lower is None else cobb_angle_deg(upper, lower)


def _centroid(mask: np.ndarray) -> tuple[float, float] | None:
    rows, cols = np.nonzero(mask)
    return (float(rows.mean()), float(cols.mean())) if len(rows) else None


def reference_endplate(level_labels: np.ndarray, level: str, spacing: tuple[float, float]) -> Endplate | None:
    """The superior endplate of one level on a per-level reference mask, guided like the worker's fit.

    The reference labels have no discs, so the column between the body and its neighbour stands
    in for the disc's axis (the body above, else the one below): unguided, a body whose posterior
    wall is straighter than its endplate gave the wall (MyoSegmenTUM 23: L5 at -74 deg).
    """
    mask = level_labels == LEVEL_VALUES[level]
    centre = _centroid(mask)
    if centre is None:
        return None
    order = [lv for lv, _ in sorted(LEVEL_VALUES.items(), key=lambda kv: kv[1]) if lv != "L6"]
    k = order.index(level)
    above = _centroid(level_labels == LEVEL_VALUES[order[k - 1]]) if k > 0 else None
    below = _centroid(level_labels == LEVEL_VALUES[order[k + 1]]) if k + 1 < len(order) else None
    return fit_superior_endplate(mask, spacing, expected_tilt_deg=square_to_column_deg(above, centre, below, spacing))


def l1_l5_angle(samples: Sequence[ds.Sample], predictions: Sequence[np.ndarray],
                vertebra_shares: Sequence[np.ndarray | None] | None = None) -> dict:
    """L1-L5 angle from predicted (identified) bodies vs from the reference level masks, on real
    slices with per-level labels and a known spacing. With each slice's vertebra_share
    (pipeline.analysis), the predicted endplates are fitted from it, as the worker fits them."""
    cases, unmeasured = [], []
    if vertebra_shares is None:
        vertebra_shares = [None] * len(samples)
    for s, pred, vertebra in zip(samples, predictions, vertebra_shares):
        ref = s.extra.get("level_labels")
        if s.source == ds.PHANTOM or s.spacing_mm is None or not _shows_lumbar_levels(ref):
            continue
        references = {lv: reference_endplate(ref, lv, s.spacing_mm) for lv in LUMBAR}
        reference = _l1_l5_deg(references)
        found = identify(pred, s.spacing_mm)
        endplates = superior_endplates(found, s.spacing_mm, vertebra)  # as the worker measures
        measured = _l1_l5_deg(endplates)
        if reference is None:
            continue
        if measured is None:
            # a level not identified, or its body cut by the image edge (no endplate to fit)
            missing = [lv for lv in ("L1", "L5") if endplates.get(lv) is None]
            unmeasured.append({"item": s.item, "no_endplate": missing, "flags": list(found.flags)})
            continue
        # which reference level each measured body lies on: a body given the wrong level (T12 read as
        # L1) or two bodies fused across a disc make an identification error, not a fitting one
        on_reference = {lv: _level_under(found.bodies[lv].mask, ref) for lv in ("L1", "L5")}
        cases.append({"item": s.item, "patient": s.patient_id, "source": s.source,
                      "reference_deg": reference, "measured_deg": measured,
                      "levels_match": all(on_reference[lv] == LEVEL_VALUES[lv] for lv in on_reference),
                      "predicted_on_reference_value": on_reference,
                      "endplate_tilt_error_deg": _tilt_errors(endplates, references)})
    result = agreement([c["reference_deg"] for c in cases], [c["measured_deg"] for c in cases],
                       groups=[c["patient"] for c in cases])
    per_level = {lv: [c["endplate_tilt_error_deg"][lv] for c in cases if lv in c["endplate_tilt_error_deg"]]
                 for lv in LUMBAR}
    per_source: dict[str, list[float]] = {}
    for c in cases:
        per_source.setdefault(c["source"], []).append(abs(c["measured_deg"] - c["reference_deg"]))
    return {**result, "cases": cases, "not_measured": unmeasured,
            "median_abs_error_per_source_deg": {src: float(np.median(e)) for src, e in per_source.items()},
            "endplate_tilt_median_abs_error_deg": {lv: float(np.median(np.abs(v))) for lv, v in per_level.items() if v}}


def spread_against_error(combined: dict, passes: Sequence[dict], limit_deg: float = 5.0) -> dict:
    """Whether an ensemble's spread is an uncertainty: on the real slices every pass measured,
    the range of the passes' own L1-L5 angles against the combined angle's error (results of
    l1_l5_angle). A spread that follows the error ranks the slices as the error does (rank
    correlation near 1) and leaves the slices within limit_deg (the worker's flag,
    AnalysisConfig.max_member_spread_deg) with the smaller errors."""
    angles = [{c["item"]: c["measured_deg"] for c in p.get("cases", [])} for p in passes]
    rows = [(max(a[c["item"]] for a in angles) - min(a[c["item"]] for a in angles),
             abs(c["measured_deg"] - c["reference_deg"]))
            for c in combined.get("cases", []) if all(c["item"] in a for a in angles)]
    result = {"passes": len(passes), "n": len(rows), "limit_deg": limit_deg,
              "per_pass_median_abs_error_deg": [p.get("median_abs_error_deg") for p in passes],
              "per_pass_measured": [p.get("n", 0) for p in passes]}
    if len(rows) < 3:
        return result
    spread, error = np.array(rows).T
    ranks = [np.argsort(np.argsort(v)) for v in (spread, error)]
    within = spread <= limit_deg
    return {**result, "rank_correlation": float(np.corrcoef(*ranks)[0, 1]),
            "median_spread_deg": float(np.median(spread)),
            "within_limit": {"slices": int(within.sum()),
                             "median_abs_error_deg": float(np.median(error[within])) if within.any() else None},
            "beyond_limit": {"slices": int((~within).sum()),
                             "median_abs_error_deg": float(np.median(error[~within])) if (~within).any() else None}}


def _tilt_errors(endplates: dict[str, Endplate | None], references: dict[str, Endplate | None]) -> dict[str, float]:
    """Per lumbar level, the predicted superior endplate's direction minus the reference's (deg):
    which endplates an angle's error comes from."""
    return {lv: signed_angle_deg(np.asarray(references[lv].direction_mm), np.asarray(endplates[lv].direction_mm))
            for lv in LUMBAR if endplates.get(lv) is not None and references.get(lv) is not None}


def synthetic_lla(segment: Segment, count: int = 120, seed: int = 7, slices: int = 7,
                  lla_range: tuple[float, float] = (15.0, 77.0), cache_dir: str | None = "default",
                  progress: bool = False) -> dict:
    """L1-S1 LLA measured by pipeline.analysis on fresh synthetic series vs the exact angle."""
    samples = ds.load_phantoms(count, seed, slices, lla_range, cache_dir=cache_dir)
    series: dict[str, list[ds.Sample]] = {}
    for s in samples:
        series.setdefault(s.patient_id, []).append(s)
    cases, unmeasured = [], []
    for k, (pid, group) in enumerate(series.items()):
        truth = next(s.lla_deg for s in group if s.lla_deg is not None)
        spacing = group[0].spacing_mm
        probabilities = np.stack(segment([s.image for s in group]))
        predicted = analyze(probabilities.argmax(axis=-1).astype(np.uint8), spacing, probabilities)
        on_reference = analyze(np.stack([s.mask for s in group]), spacing)
        case = {"series": pid, "reference_deg": truth, "measured_deg": predicted.lla_deg,
                "on_reference_masks_deg": on_reference.lla_deg, "slice_index": predicted.slice_index,
                "flags": list(predicted.flags)}
        (cases if predicted.lla_deg is not None else unmeasured).append(case)
        if progress and (k + 1) % 10 == 0:
            print(f"  synthetic series {k + 1}/{len(series)}", flush=True)
    ref_ok = [c for c in cases + unmeasured if c["on_reference_masks_deg"] is not None]
    return {
        "series": len(series), "slices_per_series": slices, "seed": seed, "lla_range_deg": list(lla_range),
        "measured": len(cases),
        **agreement([c["reference_deg"] for c in cases], [c["measured_deg"] for c in cases]),
        "measurement_alone_on_reference_masks": agreement([c["reference_deg"] for c in ref_ok],
                                                           [c["on_reference_masks_deg"] for c in ref_ok]),
        "cases": cases, "not_measured": unmeasured,
    }
