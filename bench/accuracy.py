"""Accuracy through the product (issue 20): `lumbarnode analyze`'s own code path on the real
data of the validation patients, beside what `lumbarnode evaluate` measures inside the training
code on the same patients.

    .venv/bin/python -m bench.accuracy [--run models/unet_4class.run] [--evaluate METRICS.json]

- Per-level volumes (MyoSegmenTUM, Chu): each is wrapped as a DICOM MR series with its true
  spacing (`lumbarnode wrap`'s writer) and analysed as a series (`worker.analyze.run`, what the
  command runs). On the slice analyze chose: are L1..L5 identified on their true bodies, and
  the L1-L5 angle from analyze's endplates against the reference endplates of the labels (the
  same reference `evaluate` uses). analyze measures one slice per volume; evaluate measures
  every slice showing L1..L5, so the counts differ.
- SPIDER T2 slices: each PNG analysed as a slice; vertebra, disc and canal Dice of analyze's
  class map, pooled per source as `evaluate` pools them.
- Synthetic series (`--synthetic N`, fresh phantom seeds): the L1-S1 angle against its exact truth.

Prints per-source tables and the worst cases; writes bench/accuracy.json and, per volume, the
overlay analyze draws (bench/accuracy/*.png). Needs ../shared/data. Never reads held-out
patients (the split's validation list holds none; the loaders refuse them).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from pipeline.cobb import signed_angle_deg, to_mm
from pipeline.labels import LEVEL_VALUES
from pipeline.overlay import render_overlay
from training.evaluate import overlap_counts
from training.measurement import _level_under, median_interval, reference_endplate
from dicom_io.volumes import load_real, wrap_as_dicom
from training.datasets import shared_data_dir

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "accuracy.json"
PICTURES = ROOT / "bench" / "accuracy"
LUMBAR = ("L1", "L2", "L3", "L4", "L5")
PER_LEVEL = ("chu2015-vb2", "myosegmentum-vb3")
SPIDER = "spider-t2-slices"
CLASSES = {1: "vertebra", 2: "disc", 3: "canal"}


def validation_patients(run: Path) -> dict[str, list[str]]:
    by_source: dict[str, list[str]] = {}
    for item in json.loads((run / "split.json").read_text())["validation"]:
        source, _, patient = item.partition(":")
        by_source.setdefault(source, []).append(patient)
    return by_source


def _direction_mm(ends, spacing) -> np.ndarray:
    (r0, c0), (r1, c1) = ends
    points = to_mm(np.array([r0, r1]), np.array([c0, c1]), spacing)
    return points[1] - points[0]


def per_level_volume(path: Path, models, settings, work: Path) -> dict:
    """One volume through analyze as a DICOM series, judged on the slice analyze chose."""
    from worker import analyze, rendering

    volume = load_real(path)
    folder = work / f"{path.parent.name}-{path.stem}"
    wrap_as_dicom(volume, folder)
    started = time.perf_counter()
    measured = analyze.run(folder, models, settings)
    seconds = time.perf_counter() - started
    result = rendering.as_json(measured)
    case = {"item": f"{path.parent.name}/{path.name}", "seconds": round(seconds, 2),
            "exit": rendering.exit_code(measured), "flags": result["flags"],
            "lla_deg": result["lla_deg"], "lla_spread_deg": result.get("lla_spread_deg")}
    analysis = measured.analysis
    if analysis is None or analysis.slice_index is None:
        reason = result.get("refused", "no slice measured")
        return {**case, "refused": reason, "identified": False, "errors": {lv: "refused" for lv in LUMBAR}}
    k = analysis.slice_index
    # the series as analyze loaded it is the volume's own slice order and layout (checked here)
    if not np.array_equal(measured.slices.pixels[k].astype(np.float32), volume.image[k].astype(np.float32)):
        raise AssertionError(f"{path.name}: analyze's slice {k} is not the volume's slice {k}")
    truth = volume.labels[k]
    spacing = measured.slices.spacing
    errors = {}
    for level in LUMBAR:
        found = analysis.label_map == LEVEL_VALUES[level]
        got = _level_under(found, truth) if found.any() else None
        if got != LEVEL_VALUES[level]:
            errors[level] = "not found" if not found.any() else f"on reference value {got}"
    case.update(slice_index=k, identified=not errors, errors=errors)
    ends = {lv: analysis.vertebrae[lv].superior_endplate_px for lv in ("L1", "L5")
            if lv in analysis.vertebrae and analysis.vertebrae[lv].superior_endplate_px is not None}
    references = {lv: reference_endplate(truth, lv, spacing) for lv in LUMBAR}
    if len(ends) == 2 and references["L1"] is not None and references["L5"] is not None:
        measured_deg = signed_angle_deg(_direction_mm(ends["L1"], spacing), _direction_mm(ends["L5"], spacing))
        reference_deg = signed_angle_deg(np.asarray(references["L1"].direction_mm),
                                         np.asarray(references["L5"].direction_mm))
        case.update(l1_l5_measured_deg=round(float(measured_deg), 2), l1_l5_reference_deg=round(float(reference_deg), 2),
                    l1_l5_error_deg=round(float(measured_deg - reference_deg), 2))
    # the measured slice as analyze drew it, with the reference endplates of its labels in green
    notice = ("reference endplates green" if "l1_l5_error_deg" not in case else
              f"L1-L5 {case['l1_l5_measured_deg']:.1f} deg, reference (green) {case['l1_l5_reference_deg']:.1f} deg")
    drawn = {lv: (e.anterior_px, e.posterior_px) for lv, e in references.items() if e is not None}
    picture = render_overlay(measured.slices.pixels[k], analysis, spacing, notice=notice, reference=drawn)
    PICTURES.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(PICTURES / f"{path.parent.name}-{path.stem}.png"), picture)
    return case


def spider_patient(patient: str, models, settings, data: Path) -> tuple[dict, np.ndarray]:
    """Every slice of one SPIDER patient through analyze as a PNG: overlap counts per class."""
    from worker import analyze, rendering

    counts = np.zeros((3, 3))
    exits: dict[int, int] = {}
    for image in sorted((data / SPIDER / "images").glob(f"{patient}_*.png")):
        measured = analyze.run(image, models, settings)
        code = rendering.exit_code(measured)
        exits[code] = exits.get(code, 0) + 1
        mask = cv2.imread(str(data / SPIDER / "masks" / image.name), cv2.IMREAD_GRAYSCALE)
        if measured.class_maps is None:  # refused: nothing segmented counts as nothing found
            predicted = np.zeros_like(mask)
        else:
            predicted = measured.class_maps[0]
        counts += overlap_counts(predicted, (np.uint8(1) << mask).astype(np.uint8))[1:]  # SPIDER: every pixel decided
    return {"patient": patient, "slices": sum(exits.values()), "exits": exits}, counts


def synthetic_series(count: int, models, settings, work: Path, first_seed: int = 900_000) -> list[dict]:
    """Fresh phantom series (seeds no training run draws) written as DICOM and analysed: the
    L1-S1 angle against its exact truth."""
    from pipeline.synthetic.phantom import PhantomParams
    from worker.phantom_study import write_phantom_study
    from worker import analyze, rendering

    cases = []
    for seed in range(first_seed, first_seed + count):
        study = write_phantom_study(PhantomParams(seed=seed, slices=7), work / f"phantom-{seed}")
        result = rendering.as_json(analyze.run(study.dicom_dir, models, settings))
        truth = study.truth["lla_deg"]
        cases.append({"seed": seed, "truth_deg": round(truth, 2), "lla_deg": result["lla_deg"],
                      "lla_spread_deg": result.get("lla_spread_deg"), "flags": result["flags"],
                      "error_deg": None if result["lla_deg"] is None else round(result["lla_deg"] - truth, 2)})
    return cases


def _dice(counts: np.ndarray) -> dict[str, float]:
    inter, pred, true = counts[:, 0], counts[:, 1], counts[:, 2]
    return {CLASSES[c + 1]: round(float(2 * inter[c] / (pred[c] + true[c])), 4) for c in range(3) if true[c] > 0}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.accuracy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=str(ROOT / "models" / "unet_4class.run"), help="the training run's split")
    parser.add_argument("--evaluate", help="metrics.json of `lumbarnode evaluate` on the same run, to print beside")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--synthetic", type=int, default=30, help="fresh phantom series for the L1-S1 angle (0: none)")
    args = parser.parse_args()

    from worker.method import Models
    from worker.settings import Settings

    settings = Settings.from_env()
    models = Models.load(settings)
    data = shared_data_dir()
    patients = validation_patients(Path(args.run))
    report: dict = {"model": models.used().as_dict(), "per_level": [], "spider": {}}
    with tempfile.TemporaryDirectory() as work:
        for source in PER_LEVEL:
            for patient in patients.get(source, []):
                case = per_level_volume(data / source / f"{patient}.npz", models, settings, Path(work))
                report["per_level"].append(case)
                print(f"{case['item']:<32} exit {case['exit']}  identified {'yes' if case['identified'] else 'NO '}"
                      f"  L1-L5 error {case.get('l1_l5_error_deg', 'n/a')}  spread {case['lla_spread_deg']}"
                      f"  flags {', '.join(case['flags'][:3])}")
    total = np.zeros((3, 3))
    for patient in patients.get(SPIDER, []):
        summary, counts = spider_patient(patient, models, settings, data)
        total += counts
        report["spider"].setdefault("patients", []).append({**summary, "dice": _dice(counts)})
        print(f"{SPIDER}/{patient:<14} {summary['slices']} slices, exits {summary['exits']}, Dice {_dice(counts)}")
    report["spider"]["pooled_dice"] = _dice(total)
    if args.synthetic:
        with tempfile.TemporaryDirectory() as work:
            report["synthetic"] = synthetic_series(args.synthetic, models, settings, Path(work))
        errors = [abs(c["error_deg"]) for c in report["synthetic"] if c["error_deg"] is not None]
        report["synthetic_summary"] = {
            "series": len(report["synthetic"]), "measured": len(errors),
            "median_abs_error_deg": round(float(np.median(errors)), 2) if errors else None,
            "median_95ci_deg": [round(v, 2) for v in median_interval(errors)] if len(errors) > 1 else None,
            "over_5_deg": sum(e > 5 for e in errors)}
    report["summary"] = summarise(report["per_level"])
    evaluate = json.loads(Path(args.evaluate).read_text()) if args.evaluate else None
    print_tables(report, evaluate)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {args.out}; overlays in {PICTURES}")
    return 0


def summarise(cases: list[dict]) -> dict:
    summary = {}
    for source in PER_LEVEL:
        mine = [c for c in cases if c["item"].startswith(source)]
        errors = [abs(c["l1_l5_error_deg"]) for c in mine if "l1_l5_error_deg" in c]
        summary[source] = {
            "volumes": len(mine), "identified": sum(c["identified"] for c in mine),
            "l1_l5_measured": len(errors),
            "l1_l5_median_abs_error_deg": round(float(np.median(errors)), 2) if errors else None,
            "wrong_sign": sum(1 for c in mine if "l1_l5_error_deg" in c
                              and np.sign(c["l1_l5_measured_deg"]) != np.sign(c["l1_l5_reference_deg"])),
        }
    errors = [abs(c["l1_l5_error_deg"]) for c in cases if "l1_l5_error_deg" in c]
    spreads = [c["lla_spread_deg"] for c in cases if c.get("lla_spread_deg") is not None]
    summary["all"] = {"volumes": len(cases), "identified": sum(c["identified"] for c in cases),
                      "lla_spread_median_deg": round(float(np.median(spreads)), 2) if spreads else None,
                      "l1_l5_measured": len(errors),
                      "l1_l5_median_abs_error_deg": round(float(np.median(errors)), 2) if errors else None,
                      "l1_l5_median_95ci_deg": [round(v, 2) for v in median_interval(errors)] if len(errors) > 1 else None}
    return summary


def print_tables(report: dict, evaluate: dict | None) -> None:
    print("\nper-level volumes through analyze (one slice per volume, the one analyze chose)")
    print(f"{'source':<20}{'volumes':>8}{'L1..L5 ok':>11}{'L1-L5 measured':>16}{'median |err|':>14}{'wrong sign':>12}"
          + (f"{'evaluate: ok':>14}{'median |err|':>14}" if evaluate else ""))
    for source, s in report["summary"].items():
        line = (f"{source:<20}{s['volumes']:>8}{s['identified']:>11}{s['l1_l5_measured']:>16}"
                f"{str(s['l1_l5_median_abs_error_deg']):>14}{str(s.get('wrong_sign', '')):>12}")
        if evaluate:
            ident = evaluate["identification"]["per_source"].get(source, {}) if source != "all" else \
                {"accuracy": evaluate["identification"]["accuracy"]}
            angle = evaluate["l1_l5_angle_real"]
            median = angle["median_abs_error_per_source_deg"].get(source) if source != "all" else angle["median_abs_error_deg"]
            accuracy = ident.get("accuracy")
            line += f"{'' if accuracy is None else f'{accuracy:.1%}':>14}{'' if median is None else f'{median:.2f}':>14}"
        print(line)
    all_ = report["summary"]["all"]
    print(f"all volumes: L1-L5 median |error| {all_['l1_l5_median_abs_error_deg']} deg, "
          f"95% CI {all_['l1_l5_median_95ci_deg']} (n={all_['l1_l5_measured']}, one slice per volume); "
          f"L1-S1 spread across ensemble members, median {all_['lla_spread_median_deg']} deg")
    exits: dict[str, int] = {}
    for patient in report["spider"].get("patients", []):
        for code, count in patient["exits"].items():
            exits[str(code)] = exits.get(str(code), 0) + count
    print(f"\nSPIDER T2 slices through analyze (PNG): exits {exits} (0 measured, 3 no angle, 2 refused); "
          f"pooled Dice {report['spider']['pooled_dice']}"
          + (f"; evaluate: {evaluate['pooled_dice_per_source'].get(SPIDER)}" if evaluate else ""))
    if "synthetic_summary" in report:
        syn = report["synthetic_summary"]
        print(f"synthetic L1-S1 through analyze: {syn['measured']} of {syn['series']} measured, median |error| "
              f"{syn['median_abs_error_deg']} deg (95% CI {syn['median_95ci_deg']}), {syn['over_5_deg']} over 5 deg"
              + (f"; evaluate: {evaluate['lla_synthetic']['median_abs_error_deg']:.2f} deg (n = "
                 f"{evaluate['lla_synthetic']['n']}, other series)" if evaluate else ""))
    worst = sorted((c for c in report["per_level"] if "l1_l5_error_deg" in c), key=lambda c: -abs(c["l1_l5_error_deg"]))[:3]
    for c in worst:
        print(f"worst: {c['item']} L1-L5 {c['l1_l5_measured_deg']} vs {c['l1_l5_reference_deg']} deg, flags {c['flags']}")


if __name__ == "__main__":
    raise SystemExit(main())
