"""Turn two training runs into the shipped models: weights, their descriptions and a model card.

    python -m training package RUN_UNET RUN_DETECLORDOSE --out models --version 1.2.0 \
        [--other-seeds RUN_UNET_SEED1 RUN_UNET_SEED2 ...]

Writes into --out:
  unet_4class.weights.h5, unet_4class.json      the run's float16 weights and their description
  deteclordose.weights.h5, deteclordose.json    (pipeline.inference.ModelInfo reads the .json)
  MODEL_CARD.md                                 data, licences, split, seed, epochs, metrics, sha256
  eval/*.png                                    the runs' evaluation plots the card refers to
  unet_4class.run/config.json, split.json       the shipped U-Net's recipe and validation patients, so
                                                that `lumbarnode evaluate models/unet_4class.run`
                                                re-measures the shipped weights after a change to the
                                                measurement, on the same patients
Everything in the card is read from the runs' config.json, split.json, history.json and
eval/metrics.json: nothing is typed in by hand, so `make train` re-creates the same card.
    python -m training package --add-member RUN_UNET_SEED_N --out models
ships one more U-Net of the shipped recipe (same validation patients) as an ensemble member,
`unet_4class_seed<N>`, and lists it in the card's ensemble section; the rest of the card is kept.
--other-seeds: U-Net runs of the same recipe with another --seed on the same validation patients
(--split-seed); the card sets their figures beside the shipped run's, so a reader can tell what
the data gives from what one lucky or unlucky start gives. Their weights are not shipped.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.inference import sha256_of
from pipeline.networks import LORDOSIS_CLASSES, SEGMENTATION_CLASSES

SEGMENTATION_NAME = "unet_4class"
CLASSIFIER_NAME = "deteclordose"

# What each data source is, who made it, and under which terms (from ../shared/data/README.md).
SOURCES = {
    "spider-t2-slices": "SPIDER lumbar spine MRI (van der Graaf et al., Sci Data 11:264, 2024, "
                        "doi:10.1038/s41597-024-03090-w), T2 SPACE sagittal slices as PNG via "
                        "github.com/istiak769/Lumbar-Spine-MRI-Segementation; CC BY 4.0. Pixel aspect ratio "
                        "lost in the PNGs: used for segmentation only, never for angles.",
    "vesal-t2-slices": "github.com/sulaimanvesal/vertebraeSegementation test images (MIT); origin, patients "
                       "and spacing undocumented; bodies and discs only; training split only.",
    "myosegmentum-vb3": "MyoSegmenTUM spine (Burian et al., BMC Musculoskelet Disord 20:152, 2019, "
                        "doi:10.1186/s12891-019-2528-x), chemical-shift-encoded gradient echo (not T2 TSE), "
                        "via fastcleverseg (GPL-3.0; Ramos et al., Magn Reson Imaging 109:134-146, 2024); "
                        "OSF licence not checked. Vertebral bodies L1-L5 labelled per level.",
    "chu2015-vb2": "Chu et al., PLoS ONE 10(11):e0143327, 2015 (doi:10.1371/journal.pone.0143327), 3-D T2 TSE, "
                   "via fastcleverseg (GPL-3.0); Zenodo licence not checked. Bodies T11-L5 labelled per level.",
    "phantom": "synthetic sagittal lumbar MR made by pipeline/synthetic/phantom.py (exact labels and LLA by construction).",
}


PLOTS_SEGMENTATION = ("training_curves.png", "dice_per_label.png", "confusion_segmentation.png",
                      "bland_altman_l1_l5_real.png", "bland_altman_lla_synthetic.png")
PLOTS_CLASSIFIER = ("confusion_classifier.png",)


def _read(run: Path, name: str) -> dict:
    path = run / name
    return json.loads(path.read_text()) if path.is_file() else {}


def _copy_model(run: Path, name: str, out: Path, version: str, architecture: str, classes: Sequence[str],
                date: str) -> dict:
    config = _read(run, "config.json")
    weights = out / f"{name}.weights.h5"
    shutil.copyfile(run / config["result"]["weights_f16"], weights)
    description = {"name": name, "version": version, "architecture": architecture,
                   "input_size": config["input_size"], "classes": list(classes), "sha256": sha256_of(weights),
                   "dtype": "float16 (loaded into the float32 model)", "trained": date, "seed": config["seed"],
                   "training_command": "lumbarnode train " + " ".join(config["arguments"].get("argv", []))}
    (out / f"{name}.json").write_text(json.dumps(description, indent=2) + "\n")
    return description


def keep_run_description(run: Path, dest: Path, weights: str) -> None:
    """The run's config.json (pointing at the shipped weights) and split.json: what
    `lumbarnode evaluate` needs to rebuild the validation samples; the run itself is not kept."""
    dest.mkdir(parents=True, exist_ok=True)
    config = _read(run, "config.json")
    config["result"] = {**config.get("result", {}), "weights_f16": weights}
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    shutil.copyfile(run / "split.json", dest / "split.json")


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _interval(agreement: dict, label: str = "95% CI ") -> str:
    """' (95% CI a..b)' for the median's bootstrap interval, when the metrics have it."""
    ci = agreement.get("median_abs_error_ci95_deg")
    return "" if not ci else f" ({label}{ci[0]:.2f}..{ci[1]:.2f})"


def _segmentation_section(run: Path, info: dict) -> list[str]:
    config, split, history = _read(run, "config.json"), _read(run, "split.json"), _read(run, "history.json")
    metrics = _read(run / "eval", "metrics.json")
    sources = sorted(set(split.get("train_counts", {})) | set(split.get("validation_counts", {})))
    lines = [
        f"## Segmentation: `{info['name']}` {info['version']}", "",
        "The paper's U-Net (2,158,468 parameters, METHOD.md) with a 4-class softmax head: "
        + ", ".join(SEGMENTATION_CLASSES) + f"; input {info['input_size']} x {info['input_size']}, min-max "
        "normalised (pipeline/preprocess.py).", "",
        f"- sha256 of `{info['name']}.weights.h5`: `{info['sha256']}`",
        f"- Trained {info['trained']} on this project's CPU machine (2 cores), seed {config['seed']}, "
        f"{history.get('epochs_run')} epochs of {config['steps_per_epoch']} steps x batch {config['batch_size']} "
        f"at {config['input_size']} px after a warm-up at {(config.get('warmup') or {}).get('size')} px "
        f"({(config.get('warmup') or {}).get('epochs')} epochs); best epoch {history.get('best_epoch')}, "
        f"stopped by {history.get('stopped_by')}, {history.get('seconds', 0) / 60:.0f} min.",
        f"- Adam {config['learning_rate']}, loss: {config['loss']}; class weights {config.get('class_weights')}; "
        f"learning rate x{config.get('lr_plateau_factor')} on a validation plateau; augmentation "
        f"{config['augmentation']}.",
        f"- Command: `{info['training_command']}`", "",
        "### Data (patient-level split, seed " + str(split.get("seed")) + ")", "",
        "| source | train slices (patients) | validation slices (patients) |", "| --- | --- | --- |",
    ]
    for src in sources:
        tr = split.get("train_counts", {}).get(src, {})
        va = split.get("validation_counts", {}).get(src, {})
        lines.append(f"| {src} | {tr.get('slices', 0)} ({tr.get('patients', 0)}) | "
                     f"{va.get('slices', 0)} ({va.get('patients', 0)}) |")
    lines += ["", *[f"- **{src}**: {SOURCES.get(src, '')}" for src in sources],
              "- The held-out patients listed in ../shared/data/MANIFEST.json were never loaded (the loaders "
              "refuse them).", "", "### Validation metrics (`lumbarnode evaluate`)", "",
              "| class | Dice (mean over patients) | IoU | patients |", "| --- | --- | --- | --- |"]
    for cls, m in metrics.get("mean_over_patients", {}).items():
        lines.append(f"| {cls} | {_fmt(m['dice'])} | {_fmt(m['iou'])} | {m['patients']} |")
    lines += ["", "Per source (Dice, mean over patients):", ""]
    for src, per in metrics.get("per_source", {}).items():
        lines.append(f"- {src}: " + ", ".join(f"{c} {_fmt(m['dice'])}" for c, m in per.items()))
    lines += ["", "Each class is scored only on pixels whose truth is known: on the per-level volumes "
              "(myosegmentum-vb3, chu2015-vb2) that is the labelled bodies, the disc spaces between them and a "
              "strip in front of the spine, so their figures say nothing about posterior elements or the "
              "sacrum. Identification and angles below run the worker's own code on the predictions."]
    ident = metrics.get("identification", {})
    if ident.get("slices"):
        lines += ["", f"- L1..L5 identified correctly on {ident['correct']} / {ident['slices']} validation slices "
                  f"that show them ({ident['accuracy']:.1%}); per source: "
                  + ", ".join(f"{s} {v['accuracy']:.1%} of {v['slices']}" for s, v in ident["per_source"].items())
                  + (f"; {ident['silent']} of the {len(ident['wrong'])} wrong slices carried no quality flag"
                     if "silent" in ident else "")]
    real = metrics.get("l1_l5_angle_real", {})
    if real.get("n"):
        lines.append(f"- L1-L5 angle on real validation volumes, predicted vs reference masks: median |error| "
                     f"{_fmt(real['median_abs_error_deg'], 2)} deg{_interval(real)}, MAE {_fmt(real['mae_deg'], 2)}, "
                     f"bias {real['bias_deg']:+.2f}, n = {real['n']} (not measured on {len(real['not_measured'])})")
        per_source = real.get("median_abs_error_per_source_deg")
        if per_source:
            counts = {src: sum(c.get("source") == src for c in real["cases"]) for src in per_source}
            lines.append("  - median |error| per source: "
                         + ", ".join(f"{src} {_fmt(v, 2)} deg (n = {counts[src]})" for src, v in per_source.items()))
        tilts = real.get("endplate_tilt_median_abs_error_deg")
        if tilts:
            lines.append("  - each superior endplate, predicted vs reference direction, median |error|: "
                         + ", ".join(f"{lv} {_fmt(v, 1)}" for lv, v in tilts.items()) + " deg")
    syn = metrics.get("lla_synthetic", {})
    if syn.get("n"):
        alone = syn["measurement_alone_on_reference_masks"]
        lines.append(f"- L1-S1 LLA on {syn['series']} fresh synthetic series ({syn['slices_per_series']} slices, "
                     f"exact truth): measured on {syn['measured']}, median |error| "
                     f"{_fmt(syn['median_abs_error_deg'], 2)} deg{_interval(syn)}, MAE {_fmt(syn['mae_deg'], 2)}, "
                     f"95% limits of agreement {syn['loa_low_deg']:+.2f} .. {syn['loa_high_deg']:+.2f} deg; "
                     "the measurement alone on the reference masks: median |error| "
                     f"{_fmt(alone.get('median_abs_error_deg'), 2)} deg")
        big = [c for c in syn["cases"] if abs(c["measured_deg"] - c["reference_deg"]) > 5.0]
        if big:
            lines.append(f"  - {len(big)} of {syn['measured']} synthetic series off by more than 5 deg (reference "
                         + ", ".join(f"{c['reference_deg']:.0f}" for c in big) + " deg); "
                         f"with a quality flag: {sum(bool(c['flags']) for c in big)} of {len(big)}.")
    lines.append(f"- Pixel accuracy {_fmt(metrics.get('pixel_accuracy'), 4)} (background-dominated; beside "
                 "the above only).")
    lines += ["", "Plots: `eval/training_curves.png`, `eval/dice_per_label.png`, `eval/confusion_segmentation.png`, "
              "`eval/bland_altman_l1_l5_real.png`, `eval/bland_altman_lla_synthetic.png`."]
    return lines


def _classifier_section(run: Path, info: dict) -> list[str]:
    config, split, history = _read(run, "config.json"), _read(run, "split.json"), _read(run, "history.json")
    metrics = _read(run / "eval", "metrics.json")
    kw = config["data"]["kwargs"] or {"count": "?", "lla_range": (float("nan"), float("nan"))}
    per_class = metrics.get("per_class", {})
    return [
        f"## Lordosis class (second opinion): `{info['name']}` {info['version']}", "",
        f"The paper's Deteclordose CNN (six 3x3 conv 32->512, dense {config.get('dense')}, dropout 0.5, softmax "
        f"{', '.join(LORDOSIS_CLASSES)}); input {info['input_size']} x {info['input_size']}.", "",
        f"- sha256 of `{info['name']}.weights.h5`: `{info['sha256']}`",
        f"- Trained {info['trained']}, seed {config['seed']}, {history.get('epochs_run')} epochs (batch "
        f"{config['batch_size']}, Adam {config['learning_rate']}, class-weighted cross-entropy), best epoch "
        f"{history.get('best_epoch')}, stopped by {history.get('stopped_by')}.",
        f"- Command: `{info['training_command']}`",
        f"- **Data: synthetic only.** {kw['count']} phantom mid-sagittal slices (LLA uniform in "
        f"{kw['lla_range'][0]:g}..{kw['lla_range'][1]:g} deg), classes from the rule on the exact angle "
        f"(< 39 hypo, 39..< 53 normal, >= 53 hyper); train {split.get('train_class_counts')}, validation "
        f"{split.get('validation_class_counts')}. No real image here has a reference L1-S1 angle, so "
        "**nothing says how it does on patients**: it is a second opinion whose disagreement is a flag, never "
        "the result.",
        f"- Validation (synthetic): accuracy {_fmt(metrics.get('accuracy'))}, macro-F1 "
        f"{_fmt(metrics.get('macro_f1'))}; per class F1: "
        + ", ".join(f"{c} {_fmt(m['f1'])} (n={m['support']})" for c, m in per_class.items())
        + "; confusion matrix in `eval/confusion_classifier.png`.",
    ]


def _headline(run: Path) -> dict:
    """The figures the targets are set on, from one segmentation run's eval/metrics.json."""
    return {"seed": _read(run, "config.json").get("seed"), **_figures(_read(run / "eval", "metrics.json"))}


def _figures(metrics: dict) -> dict:
    ident, real, syn = (metrics.get(k, {}) for k in ("identification", "l1_l5_angle_real", "lla_synthetic"))

    def median(agreement: dict) -> str:  # the table's header says the interval is a 95% CI
        return _fmt(agreement["median_abs_error_deg"], 2) + _interval(agreement, "") if agreement.get("n") else "-"

    return {"dice": _fmt(metrics.get("mean_over_patients", {}).get("vertebra", {}).get("dice")),
            "identified": (f"{ident['correct']}/{ident['slices']} ({ident['accuracy']:.1%})"
                           if ident.get("slices") else "-"),
            "real": median(real) + (f", n = {real['n']}" if real.get("n") else ""), "synthetic": median(syn)}


def _check_same_validation(shipped: Path, others: Sequence[Path]) -> None:
    """Figures from other validation patients would not say what the seed does: refuse them."""
    validation = _read(shipped, "split.json").get("validation")
    for run in others:
        if _read(run, "split.json").get("validation") != validation:
            raise SystemExit(f"{run} was validated on other patients than {shipped}: train it with "
                             "--split-seed set to the shipped run's split seed")


def _seed_section(shipped: Path, others: Sequence[Path]) -> list[str]:
    """Run-to-run variation: the shipped run beside the same recipe trained from other seeds."""
    lines = ["### Run-to-run variation", "",
             "The same command on the same validation patients, with other training seeds (initialisation, "
             "augmentation and batch order; `--seed N --split-seed " + str(_read(shipped, "split.json").get("seed"))
             + "`). Only the first row's weights ship. The spread is what a retrained model may give.", "",
             "| seed | vertebra Dice | L1..L5 identified | real L1-L5 median abs error, deg (95% CI) | "
             "synthetic LLA median abs error, deg (95% CI) |", "| --- | --- | --- | --- | --- |"]
    for k, run in enumerate([shipped, *others]):
        h = _headline(run)
        lines.append(f"| {h['seed']}{' (shipped)' if k == 0 else ''} | {h['dice']} | {h['identified']} | "
                     f"{h['real']} | {h['synthetic']} |")
    return lines


def write_card(out: Path, seg_run: Path, seg: dict, cls_run: Path, cls: dict,
               other_seeds: Sequence[Path] = ()) -> Path:
    variation = ["", *_seed_section(seg_run, other_seeds)] if other_seeds else []
    lines = [
        "# Model card: lumbarnode shipped networks", "",
        "**Not for clinical use without local validation.** These weights were trained on a few public "
        "datasets and synthetic images on a 2-core CPU; they have not been validated on any site's scanners, "
        "protocols or patients. Use the measured angle only with the quality flags, and check it on your own "
        "data before relying on it.", "",
        "Generated by `python -m training package` from the training runs (`make train` re-creates weights and "
        "card). The weights are float16 copies of the best float32 checkpoint (half the size; Keras casts them "
        "back to float32 on load).", "",
        *_segmentation_section(seg_run, seg), *variation, "", *_classifier_section(cls_run, cls), "",
        "## Intended use and limits", "",
        "- Input: sagittal lumbar spine MR (T2 or T1), the whole series; the measured slice is chosen from the "
        "segmentation. Axial, non-MR and non-lumbar series are refused before the networks run.",
        "- Trained mostly on T2 SPACE (SPIDER) and water-fat gradient echo (MyoSegmenTUM) images and synthetic "
        "ones; other sequences, paediatric spines, implants, severe scoliosis, fractures and transitional "
        "anatomy are under-represented or absent. Transitional anatomy and missing levels are flagged, never "
        "silently relabelled.",
        "- No subset labels S1 separately: S1 is found from shape and position (the body below the lowest "
        "disc).",
    ]
    path = out / "MODEL_CARD.md"
    path.write_text("\n".join(lines) + "\n")
    return path


MEMBERS_BEGIN, MEMBERS_END = "<!-- ensemble members: written by `lumbarnode package --add-member` -->", "<!-- /ensemble members -->"


def add_member(run: Path, out: Path, version: str, date: str) -> dict:
    """Ship another U-Net of the shipped recipe as an ensemble member (issue 20): its float16
    weights as `unet_4class_seed<N>`, its description and run, and a card section that lists
    every member with its seed, hash and its own figures. The shipped run's card is kept."""
    shipped = out / f"{SEGMENTATION_NAME}.run"
    _check_same_validation(shipped, [run])
    seed = _read(run, "config.json")["seed"]
    name = f"{SEGMENTATION_NAME}_seed{seed}"
    info = _copy_model(run, name, out, version, "unet", SEGMENTATION_CLASSES, date)
    keep_run_description(run, out / f"{name}.run", f"../{name}.weights.h5")
    if (run / "eval" / "metrics.json").is_file():
        shutil.copyfile(run / "eval" / "metrics.json", out / f"{name}.run" / "metrics.json")
    _write_members_section(out)
    return info


def _write_members_section(out: Path) -> None:
    lines = [MEMBERS_BEGIN, "### Ensemble members", "",
             "U-Nets of the shipped recipe from other seeds, on the same validation patients, shipped beside "
             "`unet_4class` for an ensemble: `LUMBARNODE_SEGMENTATION_MODEL=unet_4class,<member>,...` averages "
             "their probabilities and reports the range of their own angles (`lla_spread_deg`). Each row is "
             "that network alone, measured by `lumbarnode evaluate` at training time.", "",
             "| member | seed | sha256 | vertebra Dice | L1..L5 identified | real L1-L5 median abs error, deg (95% CI) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for description in sorted(out.glob(f"{SEGMENTATION_NAME}_seed*.json")):
        info = json.loads(description.read_text())
        h = _figures(_read(out / f"{info['name']}.run", "metrics.json"))
        lines.append(f"| `{info['name']}` | {info['seed']} | `{info['sha256'][:16]}...` | {h['dice']} | "
                     f"{h['identified']} | {h['real']} |")
    lines.append(MEMBERS_END)
    card = out / "MODEL_CARD.md"
    text = card.read_text()
    if MEMBERS_BEGIN in text:
        before, rest = text.split(MEMBERS_BEGIN, 1)
        text = before + "\n".join(lines) + rest.split(MEMBERS_END, 1)[1]
    else:
        marker = "## Lordosis class"
        at = text.index(marker) if marker in text else len(text)
        text = text[:at] + "\n".join(lines) + "\n\n" + text[at:]
    card.write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lumbarnode package", description="Ship two training runs as the models.")
    p.add_argument("segmentation_run")
    p.add_argument("classifier_run")
    p.add_argument("--out", default="models")
    p.add_argument("--version", default="1.2.0")
    p.add_argument("--date", default=None, help="training date for the card (default: the runs' config time)")
    p.add_argument("--other-seeds", nargs="*", default=(), metavar="RUN",
                   help="U-Net runs of the same recipe with other --seed values and the shipped run's split "
                        "(--split-seed): reported beside it in the card, not shipped")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--add-member":
        return _main_add_member(argv[1:])
    args = p.parse_args(argv)
    seg_run, cls_run = Path(args.segmentation_run), Path(args.classifier_run)
    other_seeds = [Path(r) for r in args.other_seeds]
    _check_same_validation(seg_run, other_seeds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    date = args.date or dt.datetime.fromtimestamp((seg_run / "config.json").stat().st_mtime, dt.UTC).date().isoformat()
    seg = _copy_model(seg_run, SEGMENTATION_NAME, out, args.version, "unet", SEGMENTATION_CLASSES, date)
    cls = _copy_model(cls_run, CLASSIFIER_NAME, out, args.version, "deteclordose", LORDOSIS_CLASSES, date)
    (out / "eval").mkdir(exist_ok=True)
    for run, names in ((seg_run, PLOTS_SEGMENTATION), (cls_run, PLOTS_CLASSIFIER)):
        for name in names:
            if (run / "eval" / name).is_file():
                shutil.copyfile(run / "eval" / name, out / "eval" / name)
    keep_run_description(seg_run, out / f"{SEGMENTATION_NAME}.run", f"../{SEGMENTATION_NAME}.weights.h5")
    card = write_card(out, seg_run, seg, cls_run, cls, other_seeds)
    for info in (seg, cls):
        print(f"{out / (info['name'] + '.weights.h5')}  sha256 {info['sha256']}")
    print(f"model card: {card}")
    return 0


def _main_add_member(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="lumbarnode package --add-member",
                                description="Ship one more U-Net run of the shipped recipe as an ensemble member.")
    p.add_argument("run", help="a `lumbarnode train segmentation --seed N --split-seed <shipped>` run")
    p.add_argument("--out", default="models")
    p.add_argument("--version", default="1.2.0")
    args = p.parse_args(argv)
    run = Path(args.run)
    date = dt.datetime.fromtimestamp((run / "config.json").stat().st_mtime, dt.UTC).date().isoformat()
    info = add_member(run, Path(args.out), args.version, date)
    print(f"{Path(args.out) / (info['name'] + '.weights.h5')}  sha256 {info['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
