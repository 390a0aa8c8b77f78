"""Evaluation of trained weights: Dice and IoU per class and per patient (pixel accuracy only
beside them), confusion matrices, classifier metrics, plots, and (training.measurement) vertebra
identification, the L1-L5 angle on real volumes and the LLA on synthetic series with
Bland-Altman plots.

    python -m training evaluate /tmp/train_runs/unet            # rebuilds its validation split
    python -m training evaluate /tmp/train_runs/deteclordose --weights other.weights.h5

Segmentation metrics are computed on each slice's own pixel grid (network output resized back
with pipeline.preprocess.from_network, as inference does), and only on pixels whose truth is
known for the class in question (see training.datasets: partial labels). Dice / IoU of a
patient pool all its slices; the means are over patients.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from pipeline.analysis import vertebra_share
from pipeline.networks import LORDOSIS_CLASSES, SEGMENTATION_CLASSES
from pipeline.preprocess import CLASSIFIER_INPUT, SEGMENTATION_INPUT, from_network, to_network
from training import datasets as ds

FOREGROUND_NAMES = SEGMENTATION_CLASSES[1:]
OVERLAY_COLOURS_BGR = {1: (60, 60, 230), 2: (60, 200, 60), 3: (230, 140, 40)}  # vertebra red, disc green, canal blue


# --------------------------------------------------------------------------------------------
# Metrics on masks
# --------------------------------------------------------------------------------------------
def overlap_counts(pred: np.ndarray, bits: np.ndarray, n_classes: int = len(SEGMENTATION_CLASSES)) -> np.ndarray:
    """(n_classes, 3) = intersection, predicted, true pixel counts per class, counted on the pixels
    where the class is decided (exactly that class, or certainly not); -1 rows: undecided everywhere."""
    out = np.full((n_classes, 3), -1, np.int64)
    single = (bits & (bits - 1)) == 0  # exactly one class allowed
    for c in range(n_classes):
        bit = np.uint8(1 << c)
        truth = single & (bits == bit)
        decided = truth | ((bits & bit) == 0)
        if not decided.any():
            continue
        p = (pred == c) & decided
        out[c] = (np.count_nonzero(p & truth), np.count_nonzero(p), np.count_nonzero(truth))
    return out


def dice_iou_from_counts(inter: float, pred: float, true: float) -> tuple[float, float]:
    """NaN when the class is neither present nor predicted (nothing to score)."""
    if pred + true == 0:
        return float("nan"), float("nan")
    return 2.0 * inter / (pred + true), inter / (pred + true - inter)


def dice_iou(pred: np.ndarray, truth: np.ndarray, classes: Sequence[int] = (1, 2, 3)) -> dict[int, tuple[float, float]]:
    """Dice and IoU per class for two fully known integer label maps."""
    out = {}
    for c in classes:
        p, t = pred == c, truth == c
        out[c] = dice_iou_from_counts(np.count_nonzero(p & t), np.count_nonzero(p), np.count_nonzero(t))
    return out


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """Rows = truth, columns = prediction."""
    return np.bincount(truth.astype(np.int64) * n + pred.astype(np.int64), minlength=n * n).reshape(n, n)


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int],
                           class_names: Sequence[str] = LORDOSIS_CLASSES) -> dict:
    """Accuracy, per-class and macro precision / recall / F1, confusion matrix (rows = truth)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    n = len(class_names)
    cm = confusion_matrix(y_true, y_pred, n)
    tp = np.diag(cm).astype(float)
    precision = np.divide(tp, cm.sum(axis=0), out=np.zeros(n), where=cm.sum(axis=0) > 0)
    recall = np.divide(tp, cm.sum(axis=1), out=np.zeros(n), where=cm.sum(axis=1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(n), where=(precision + recall) > 0)
    present = cm.sum(axis=1) > 0  # macro over the classes present in the truth
    return {
        "n": int(len(y_true)),
        "accuracy": float(tp.sum() / max(len(y_true), 1)),
        "macro_precision": float(precision[present].mean()) if present.any() else 0.0,
        "macro_recall": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                             "support": int(cm[i].sum())} for i, name in enumerate(class_names)},
        "confusion_matrix": cm.tolist(),
        "confusion_labels": list(class_names),
    }


# --------------------------------------------------------------------------------------------
# Segmentation
# --------------------------------------------------------------------------------------------
def _load_model(model_weights, builder):
    if hasattr(model_weights, "predict"):
        return model_weights
    model = builder()
    model.load_weights(str(model_weights))
    return model


class MirroredPass:
    """A network run on the slices mirrored anterior <-> posterior, its output mirrored back (as
    pipeline.inference.Mirrored does for the worker)."""

    def __init__(self, model):
        self.model = model

    def predict(self, x: np.ndarray, verbose: int = 0) -> np.ndarray:
        return self.model.predict(x[:, :, ::-1], verbose=verbose)[:, :, ::-1]


def predict_probabilities(model, images: Sequence[np.ndarray], input_size: int = SEGMENTATION_INPUT,
                          batch_size: int = 8, flip: bool = False) -> Iterator[np.ndarray]:
    """Class probabilities (rows, cols, classes) on each slice's own grid, through the shared
    preprocessing contract; one slice at a time, so that a caller keeps only what it needs.
    model: one network, or an ensemble's members (a list), averaged as pipeline.inference.Ensemble
    averages them; flip: each also on the slices mirrored anterior <-> posterior, as the
    worker's "name:flip" member does (pipeline.inference.Mirrored)."""
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        x = np.concatenate([to_network(image, input_size) for image in chunk])
        prob = np.mean([m.predict(x, verbose=0) for m in models + ([MirroredPass(m) for m in models] if flip else [])],
                       axis=0)
        for image, p in zip(chunk, prob):
            yield from_network(p[None], image.shape)[0]


def predict_segmentation(model, images: Sequence[np.ndarray], input_size: int = SEGMENTATION_INPUT,
                         batch_size: int = 8, flip: bool = False) -> list[np.ndarray]:
    """Label maps (argmax) on each slice's own grid."""
    probabilities = predict_probabilities(model, images, input_size, batch_size, flip)
    return [np.argmax(p, axis=-1).astype(np.uint8) for p in probabilities]


def load_unet(model_weights, input_size: int = SEGMENTATION_INPUT):
    from pipeline.networks import build_unet

    return _load_model(model_weights, lambda: build_unet(len(SEGMENTATION_CLASSES), input_size))


def evaluate_segmentation(model_weights, samples: Sequence[ds.Sample], input_size: int = SEGMENTATION_INPUT,
                          batch_size: int = 8, return_predictions: bool = False, synthetic_series: int = 0,
                          flip: bool = False, members: Sequence = ()):
    """Dice / IoU per class (vertebra, disc, canal) per patient and their means (overall and per
    source), pooled Dice, pixel accuracy and a confusion matrix on exactly labelled pixels.
    Then identification and the L1-L5 angle on the slices with per-level labels, and the LLA on
    `synthetic_series` fresh phantom series (training.measurement).
    `model_weights`: a .weights.h5 path or a built model; members: more of them, averaged with it
    (an ensemble); flip: with the mirrored pass (predict_probabilities). Returns the dict (and
    predictions)."""
    from training import measurement

    model = [load_unet(w, input_size) for w in (model_weights, *members)]
    samples = [s for s in samples if s.mask is not None]
    predictions, vertebra_shares = [], []
    for s, p in zip(samples, predict_probabilities(model, [s.image for s in samples], input_size, batch_size, flip)):
        predictions.append(np.argmax(p, axis=-1).astype(np.uint8))
        # kept for the angle on the per-level volumes only (float16: one map per slice, not four)
        per_level = s.extra.get("level_labels") is not None
        vertebra_shares.append(vertebra_share(p).astype(np.float16) if per_level else None)
    n = len(SEGMENTATION_CLASSES)
    per_patient: dict[str, np.ndarray] = {}
    pooled = {}
    cm = np.zeros((n, n), np.int64)
    for s, pred in zip(samples, predictions):
        bits = ds.allowed_bits(s.mask, s.known, s.image.shape)
        counts = overlap_counts(pred, bits, n)
        acc = per_patient.setdefault(s.patient_id, np.full((n, 3), -1, np.int64))
        for c in range(n):
            if counts[c, 0] >= 0:
                acc[c] = np.maximum(acc[c], 0) + counts[c]
        pooled.setdefault(s.source, np.zeros((n, 3), np.int64))
        pooled[s.source] += np.maximum(counts, 0)
        single = (bits & (bits - 1)) == 0
        truth = np.log2(bits[single]).astype(np.int64)
        cm += confusion_matrix(truth, pred[single], n)

    # A class is scored only for sources that label it somewhere: the per-level volumes' certain
    # background strip decides "not disc" too, but a Dice with no disc truth would only count
    # false positives there, and say nothing about discs.
    labelled = {src: {int(v) for s in samples if s.source == src for v in np.unique(s.mask) if 0 < v < n}
                for src in {s.source for s in samples}}
    patients = {}
    for pid, acc in sorted(per_patient.items()):
        patients[pid] = {}
        for c in range(1, n):
            if acc[c, 0] >= 0 and c in labelled[pid.split(":", 1)[0]]:
                d, i = dice_iou_from_counts(*acc[c])
                patients[pid][SEGMENTATION_CLASSES[c]] = {"dice": d, "iou": i}

    def mean_over(pids: Sequence[str]) -> dict:
        out = {}
        for c in FOREGROUND_NAMES:
            vals = [patients[p][c] for p in pids if c in patients[p] and not np.isnan(patients[p][c]["dice"])]
            if vals:
                out[c] = {"dice": float(np.mean([v["dice"] for v in vals])),
                          "dice_sd": float(np.std([v["dice"] for v in vals])),
                          "iou": float(np.mean([v["iou"] for v in vals])), "patients": len(vals)}
        return out

    sources = sorted({s.source for s in samples})
    metrics = {
        "slices": len(samples), "patients": len(patients),
        "mean_over_patients": mean_over(list(patients)),
        "per_source": {src: mean_over([p for p in patients if p.startswith(src + ":")]) for src in sources},
        "pooled_dice_per_source": {
            src: {SEGMENTATION_CLASSES[c]: dice_iou_from_counts(*pooled[src][c])[0] for c in sorted(labelled[src])}
            for src in sources},
        "per_patient": patients,
        "pixel_accuracy": float(np.trace(cm) / max(cm.sum(), 1)),
        "pixel_accuracy_note": "on exactly labelled pixels, background included: dominated by background",
        "confusion_matrix": cm.tolist(), "confusion_labels": list(SEGMENTATION_CLASSES),
    }
    metrics["identification"] = measurement.identification(samples, predictions)
    metrics["l1_l5_angle_real"] = measurement.l1_l5_angle(samples, predictions, vertebra_shares)
    passes = model + ([MirroredPass(m) for m in model] if flip else [])
    if len(passes) > 1:
        # each pass alone on the real slices: does their disagreement (the worker's spread, here on
        # the L1-L5 angle that the real labels check, since none labels S1) follow the combined
        # angle's error?
        real = [s for s in samples if s.source != ds.PHANTOM and s.extra.get("level_labels") is not None]
        alone = []
        for one in passes:
            probabilities = list(predict_probabilities(one, [s.image for s in real], input_size, batch_size))
            alone.append(measurement.l1_l5_angle(real, [np.argmax(p, axis=-1).astype(np.uint8) for p in probabilities],
                                                 [vertebra_share(p) for p in probabilities]))
        metrics["l1_l5_angle_real"]["spread"] = measurement.spread_against_error(metrics["l1_l5_angle_real"], alone)
    if synthetic_series:
        print(f"measuring the LLA on {synthetic_series} fresh synthetic series ...", flush=True)
        metrics["lla_synthetic"] = measurement.synthetic_lla(
            lambda images: list(predict_probabilities(model, images, input_size, batch_size, flip)), synthetic_series)
    return (metrics, predictions) if return_predictions else metrics


def print_segmentation_summary(metrics: dict) -> None:
    for cls, m in metrics["mean_over_patients"].items():
        print(f"  {cls:9s} Dice {m['dice']:.3f}  IoU {m['iou']:.3f}  (n={m['patients']} patients)", flush=True)
    print(f"  pixel accuracy {metrics['pixel_accuracy']:.4f} (beside the above, background-dominated)", flush=True)
    ident = metrics["identification"]
    if ident["slices"]:
        print(f"  L1..L5 identified on {ident['correct']}/{ident['slices']} slices ({ident['accuracy']:.1%}); "
              f"{ident['silent']} of the {len(ident['wrong'])} wrong ones carried no flag")
    for key, name in (("l1_l5_angle_real", "L1-L5 angle, real"), ("lla_synthetic", "LLA, synthetic series")):
        m = metrics.get(key)
        if m and m.get("n"):
            low, high = m["median_abs_error_ci95_deg"]
            print(f"  {name}: median |error| {m['median_abs_error_deg']:.2f} deg (95% CI {low:.2f}..{high:.2f}), "
                  f"MAE {m['mae_deg']:.2f}, "
                  f"bias {m['bias_deg']:+.2f}, n={m['n']}", flush=True)
    spread = metrics.get("l1_l5_angle_real", {}).get("spread")
    if spread and "rank_correlation" in spread:
        alone = ", ".join(f"{e:.2f} (n={n})" for e, n in zip(spread["per_pass_median_abs_error_deg"],
                                                          spread["per_pass_measured"]) if e is not None)
        within, beyond = spread["within_limit"], spread["beyond_limit"]

        def fmt(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.2f}"

        print(f"  each of the {spread['passes']} passes alone, real L1-L5 median |error|: {alone}; their spread "
              f"(median {spread['median_spread_deg']:.2f} deg) against the error: rank correlation "
              f"{spread['rank_correlation']:+.2f} over {spread['n']} slices; median |error| {fmt(within['median_abs_error_deg'])} "
              f"deg within {spread['limit_deg']:g} deg ({within['slices']} slices), {fmt(beyond['median_abs_error_deg'])} "
              f"beyond ({beyond['slices']})", flush=True)


# --------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------
def evaluate_classifier(model_weights, samples: Sequence[ds.Sample], input_size: int = CLASSIFIER_INPUT,
                        baseline: str | None = None, dense: int = 128) -> dict:
    """Accuracy, macro-F1, precision, recall and confusion matrix against the rule class of each
    sample's reference LLA."""
    from pipeline.networks import build_deteclordose
    from pipeline.preprocess import classifier_input
    from training.baselines import build_baseline, lordosis_class_index

    def builder():
        return build_baseline(baseline, input_size) if baseline else build_deteclordose(input_size, dense=dense)

    model = _load_model(model_weights, builder)
    samples = [s for s in samples if s.lla_deg is not None]
    x = classifier_input([s.image for s in samples], input_size)
    prob = model.predict(x, batch_size=32, verbose=0)
    y_true = [lordosis_class_index(s.lla_deg) for s in samples]
    y_pred = np.argmax(prob, axis=-1).tolist()
    metrics = classification_metrics(y_true, y_pred)
    metrics["cases"] = [{"patient_id": s.patient_id, "reference_lla_deg": s.lla_deg, "truth": t, "pred": p,
                         "probabilities": [round(float(v), 4) for v in pr]}
                        for s, t, p, pr in zip(samples, y_true, y_pred, prob)]
    return metrics


# --------------------------------------------------------------------------------------------
# Reports: metrics JSON and plots
# --------------------------------------------------------------------------------------------
def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        return plt
    except ImportError:
        return None


def plot_history(history_path: Path, out: Path) -> bool:
    plt = _pyplot()
    if plt is None or not Path(history_path).is_file():
        return False
    hist = json.loads(Path(history_path).read_text())["history"]
    keys = sorted({k.removeprefix("val_") for k in hist})
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for k, style in ((key, "-o"), ("val_" + key, "-s")):
            if k in hist:
                ax.plot(range(1, len(hist[k]) + 1), hist[k], style, label=k, markersize=3)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def plot_confusion(cm: Sequence[Sequence[int]], labels: Sequence[str], out: Path, title: str) -> bool:
    plt = _pyplot()
    if plt is None:
        return False
    cm = np.asarray(cm, float)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.4 * len(labels) + 2, 1.2 * len(labels) + 1.5))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{norm[i, j]:.2f}\n({int(cm[i, j])})", ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=30)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    ax.set_title(title + " (rows normalised)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def plot_dice_per_label(metrics: dict, out: Path) -> bool:
    plt = _pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for k, name in enumerate(FOREGROUND_NAMES):
        vals = [p[name]["dice"] for p in metrics["per_patient"].values()
                if name in p and not np.isnan(p[name]["dice"])]
        if vals:
            ax.bar(k, np.mean(vals), color="lightgray", edgecolor="black")
            ax.plot(k + np.linspace(-0.25, 0.25, len(vals)), vals, "k.", markersize=4)
    ax.set_xticks(range(len(FOREGROUND_NAMES)), FOREGROUND_NAMES)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice (bar: mean over patients, dots: patients)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def plot_bland_altman(result: dict, out, title: str) -> bool:
    """Difference against mean, with bias and 95 % limits of agreement."""
    plt = _pyplot()
    cases = result.get("cases", [])
    if plt is None or len(cases) < 2:
        return False
    ref = np.array([c["reference_deg"] for c in cases])
    mea = np.array([c["measured_deg"] for c in cases])
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot((ref + mea) / 2, mea - ref, "ko", markersize=4)
    for y, style in ((result["bias_deg"], "-"), (result["loa_low_deg"], "--"), (result["loa_high_deg"], "--")):
        ax.axhline(y, color="tab:red", linestyle=style, linewidth=1)
    ax.set_xlabel("mean of measured and reference (deg)")
    ax.set_ylabel("measured - reference (deg)")
    ax.set_title(f"{title}\nbias {result['bias_deg']:+.2f}, LoA {result['loa_low_deg']:+.2f} .. "
                 f"{result['loa_high_deg']:+.2f} deg, n={result['n']}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def _overlay(image: np.ndarray, labels: np.ndarray, size: int = 224) -> np.ndarray:
    grey = (cv2.resize(to_network(image, size)[0, ..., 0], (size, size)) * 255).astype(np.uint8)
    rgb = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    lab = cv2.resize(labels, (size, size), interpolation=cv2.INTER_NEAREST)
    out = rgb.copy()
    for c, colour in OVERLAY_COLOURS_BGR.items():
        out[lab == c] = colour
    out = cv2.addWeighted(rgb, 0.55, out, 0.45, 0)
    if (lab == ds.UNKNOWN).any():
        out[(lab == ds.UNKNOWN) & ((np.indices(lab.shape).sum(axis=0) % 8) == 0)] = (128, 128, 128)  # hatch
    return out


def overlay_page(samples: Sequence[ds.Sample], predictions: Sequence[np.ndarray], out: Path, count: int = 12) -> None:
    """Validation slices spread over patients: image | truth | prediction, 2 per row."""
    if not samples:
        return
    picks = np.unique(np.linspace(0, len(samples) - 1, min(count, len(samples))).round().astype(int))
    tiles = []
    for i in picks:
        s, p = samples[i], predictions[i]
        size = 224
        grey = cv2.cvtColor((to_network(s.image, size)[0, ..., 0] * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
        row = np.hstack([grey, _overlay(s.image, s.mask, size), _overlay(s.image, p, size)])
        cv2.putText(row, s.item[-40:], (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
        cv2.putText(row, "truth", (size + 4, size - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
        cv2.putText(row, "prediction", (2 * size + 4, size - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
        tiles.append(row)
    if len(tiles) % 2:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack([tiles[k], np.full((tiles[k].shape[0], 6, 3), 255, np.uint8), tiles[k + 1]])
            for k in range(0, len(tiles), 2)]
    cv2.imwrite(str(out), np.vstack(rows))


def _no_nan(obj):
    """NaN (a class neither present nor predicted) -> null, so metrics.json stays strict JSON."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_no_nan(v) for v in obj]
    return obj


def write_segmentation_report(metrics: dict, samples: Sequence[ds.Sample], predictions: Sequence[np.ndarray],
                              out_dir: Path, history_path: Path | None = None) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = [s for s in samples if s.mask is not None]
    plots = {
        "training_curves.png": history_path is not None and plot_history(history_path, out_dir / "training_curves.png"),
        "dice_per_label.png": plot_dice_per_label(metrics, out_dir / "dice_per_label.png"),
        "confusion_segmentation.png": plot_confusion(metrics["confusion_matrix"], SEGMENTATION_CLASSES,
                                                     out_dir / "confusion_segmentation.png", "pixels"),
    }
    for key, name, title in (("l1_l5_angle_real", "bland_altman_l1_l5_real.png", "L1-L5 angle, real validation"),
                             ("lla_synthetic", "bland_altman_lla_synthetic.png", "L1-S1 LLA, synthetic series")):
        if key in metrics:
            plots[name] = plot_bland_altman(metrics[key], out_dir / name, title)
    overlay_page(samples, predictions, out_dir / "overlays.png")
    plots["overlays.png"] = True
    metrics = {**metrics, "plots": {k: ("written" if v else "skipped (no matplotlib, or fewer than 2 cases)")
                                    for k, v in plots.items()}}
    (out_dir / "metrics.json").write_text(json.dumps(_no_nan(metrics), indent=2) + "\n")


def write_classifier_report(metrics: dict, out_dir: Path, history_path: Path | None = None) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = {
        "training_curves.png": history_path is not None and plot_history(history_path, out_dir / "training_curves.png"),
        "confusion_classifier.png": plot_confusion(metrics["confusion_matrix"], LORDOSIS_CLASSES,
                                                   out_dir / "confusion_classifier.png", "lordosis class"),
    }
    metrics = {**metrics, "plots": {k: ("written" if v else "skipped (matplotlib not installed)")
                                    for k, v in plots.items()}}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lumbarnode evaluate",
                                description="Evaluate a training run's weights on its validation split.")
    p.add_argument("run", help="a training output folder (config.json, split.json)")
    p.add_argument("--weights", default=None, help="default: the run's float16 copy (the shipped weights)")
    p.add_argument("--out", default=None, help="default: <run>/eval")
    p.add_argument("--split", choices=("validation", "train"), default="validation")
    p.add_argument("--synthetic-series", type=int, default=120,
                   help="segmentation: fresh synthetic series for the LLA agreement (0 = none)")
    p.add_argument("--member", action="append", default=[], metavar="WEIGHTS",
                   help="segmentation: another U-Net of the same recipe, averaged with the run's (an ensemble, "
                        "as LUMBARNODE_SEGMENTATION_MODEL lists it); repeat for more")
    p.add_argument("--flip", action="store_true",
                   help="segmentation: average each slice with its mirrored pass (test-time augmentation)")
    args = p.parse_args(argv)
    run = Path(args.run)
    config = json.loads((run / "config.json").read_text())
    split = json.loads((run / "split.json").read_text())
    kwargs = config["data"].get("kwargs")
    if kwargs is None:
        raise SystemExit("this run's samples were given in code; it cannot be rebuilt from config.json")
    weights = Path(args.weights) if args.weights else run / config["result"]["weights_f16"]
    out = Path(args.out) if args.out else run / "eval"
    ids = set(split[args.split])
    if config["task"] == "segmentation":
        samples = [s for s in ds.segmentation_samples(**kwargs) if s.patient_id in ids]
        metrics, predictions = evaluate_segmentation(weights, samples, config["input_size"], return_predictions=True,
                                                     synthetic_series=args.synthetic_series, flip=args.flip,
                                                     members=args.member)
        write_segmentation_report(metrics, samples, predictions, out, run / "history.json")
        print_segmentation_summary(metrics)
    else:
        samples = [s for s in ds.classifier_samples(**kwargs) if s.patient_id in ids]
        baseline = config["model"] if config["model"] != "deteclordose" else None
        metrics = evaluate_classifier(weights, samples, config["input_size"], baseline, config.get("dense", 128))
        write_classifier_report(metrics, out, run / "history.json")
        print(f"accuracy {metrics['accuracy']:.3f}  macro-F1 {metrics['macro_f1']:.3f}  "
              f"macro precision {metrics['macro_precision']:.3f}  macro recall {metrics['macro_recall']:.3f}")
    print(f"metrics and plots: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
