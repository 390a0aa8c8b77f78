"""Training of the U-Net (segmentation) and of Deteclordose (lordosis class), and baselines.

    python -m training train segmentation --out /tmp/train_runs/unet
    python -m training train classifier   --out /tmp/train_runs/deteclordose
    python -m training train classifier   --out /tmp/train_runs/vgg16 --baseline vgg16

Both follow the paper where it gives a number (Adam 1e-3, 80/20 split by patient, early
stopping on the validation split, its augmentation) and the CPU budget where it does not
(U-Net batch 8, halving the learning rate on a validation plateau): the defaults, which made
the shipped weights (`make train`), finish in about 25 min (U-Net) and 10 min (Deteclordose)
on 2 CPU cores; every one of them is a flag.

Segmentation loss = partial-label cross-entropy + soft Dice:
  * cross-entropy: -log(sum of the softmax over the classes still allowed at the pixel). Where
    the label is exact this is plain categorical cross-entropy; where a source did not label a
    class (Vesal: no canal; per-level volumes: bodies only) the unlabelled classes share the
    probability, so they are never taught as background; unknown pixels add nothing. Class
    weights (default 1, 3, 5, 5 for background, vertebra, disc, canal) counter the background.
  * soft Dice (1 - mean over vertebra, disc, canal), per batch, counted only on pixels whose
    membership of that class is known.
Two engineering choices for a CPU budget (the architecture is untouched): He-normal
initialisation of the ReLU convolutions, and a warm-up of 16 x 20 steps at 128 px before the
256 px epochs (progressive resizing; the U-Net is fully convolutional). With Keras' defaults
and 256 px only, the first default run still predicted nothing but background after 90 steps.
The classifier is trained on synthetic phantom mid slices ONLY: they are the only images here
with an exact L1-S1 lordosis angle to derive the class from (rule: < 39 hypo, 39..<53 normal,
>= 53 hyper). No real image has a reference angle, so nothing here says how it does on patients.

Every run writes into its output folder: <name>.weights.h5 (best float32 weights),
<name>.f16.weights.h5 (float16 copy, half the size, loads into the float32 model as is: the one
to ship), weights.sha256, history.json, split.json (patient ids per split), config.json
(arguments, seed, data sources, versions), and eval/ (validation metrics and plots).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.inference import sha256_of as sha256_file
from pipeline.networks import LORDOSIS_CLASSES, SEGMENTATION_CLASSES
from pipeline.preprocess import (
    CLASSIFIER_INPUT, SEGMENTATION_INPUT, classifier_input, labels_to_network, to_network,
)
from training import datasets as ds
from training.augment import augment_classification, augment_segmentation
from training.baselines import BASELINES, build_baseline, lordosis_class_index

@dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    weights: Path            # best float32 weights
    weights_f16: Path        # float16 copy (ship this one)
    history: dict
    metrics: dict | None     # validation metrics, when evaluated


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------
def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Python, numpy, TensorFlow/Keras seeds; deterministic TF kernels where available."""
    import keras

    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)
    if deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def versions() -> dict:
    import cv2
    import keras
    import tensorflow as tf

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "opencv": cv2.__version__, "platform": platform.platform()}


def save_float16_copy(model_builder, model, path: Path) -> None:
    """The same weights stored as float16 (half the bytes). Keras casts them back to float32 on
    load_weights into the float32 model, so inference code needs no change."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float16")
    try:
        half = model_builder()
        half.set_weights([w.astype(np.float16) for w in model.get_weights()])
        half.save_weights(path)
    finally:
        keras.config.set_dtype_policy(previous)


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.ndarray,)):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def _data_provenance(data_dir: str | None) -> dict:
    root = Path(data_dir or ds.shared_data_dir())
    manifest = root / "MANIFEST.json"
    return {"data_dir": str(root), "manifest_sha256": sha256_file(manifest) if manifest.is_file() else None}


def _split_counts(samples: Sequence[ds.Sample]) -> dict:
    return {src: {"slices": n, "patients": len({s.patient_id for s in samples if s.source == src})}
            for src, n in sorted(Counter(s.source for s in samples).items())}


def _callbacks(checkpoint: Path, patience: int, max_minutes: float | None, epochs: int, verbose: int,
               lr_plateau: float | None = None):
    """Checkpoint of the best validation loss, early stopping, the time budget, and (optionally)
    halving the learning rate by `lr_plateau` when validation loss stalls for patience // 2 epochs."""
    import keras

    class TimeBudget(keras.callbacks.Callback):
        """Stop before an epoch that would overrun the budget; print elapsed time and an estimate."""

        def on_train_begin(self, logs=None):
            self.start = time.monotonic()
            self.reason = None

        def on_epoch_end(self, epoch, logs=None):
            elapsed = time.monotonic() - self.start
            per_epoch = elapsed / (epoch + 1)
            left = per_epoch * (epochs - epoch - 1)
            if verbose:
                print(f"  [epoch {epoch + 1}/{epochs}] elapsed {elapsed / 60:.1f} min, "
                      f"~{left / 60:.1f} min left at most", flush=True)
            if max_minutes is not None and elapsed + per_epoch > max_minutes * 60 and epoch + 1 < epochs:
                self.reason = f"time budget of {max_minutes} min"
                print(f"  stopping: the next epoch would exceed the {max_minutes} min budget", flush=True)
                self.model.stop_training = True

    budget = TimeBudget()
    return budget, [
        keras.callbacks.ModelCheckpoint(str(checkpoint), monitor="val_loss", save_best_only=True,
                                        save_weights_only=True),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True),
        budget,
    ] + ([keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=lr_plateau, patience=max(1, patience // 2),
                                            min_lr=1e-5, verbose=min(verbose, 1))] if lr_plateau else [])


def _finish(out_dir: Path, name: str, model, builder, fit_history, budget, early_stop_epochs: int,
            started: float) -> tuple[Path, Path, dict]:
    """Best weights (checkpoint) + float16 copy + hashes + history.json."""
    weights = out_dir / f"{name}.weights.h5"
    if weights.is_file():
        model.load_weights(weights)  # the checkpoint holds the best validation loss
    # re-saved from an uncompiled copy: a compiled model's file also carries the Adam state (3x size)
    clean = builder()
    clean.set_weights(model.get_weights())
    clean.save_weights(weights)
    f16 = out_dir / f"{name}.f16.weights.h5"
    save_float16_copy(builder, model, f16)
    (out_dir / "weights.sha256").write_text(
        "".join(f"{sha256_file(p)}  {p.name}\n" for p in (weights, f16)))
    hist = {k: [float(v) for v in vals] for k, vals in fit_history.history.items()}
    val_loss = hist.get("val_loss", [])
    history = {
        "history": hist,
        "epochs_run": len(val_loss),
        "best_epoch": int(np.argmin(val_loss)) + 1 if val_loss else None,
        "best_val_loss": float(min(val_loss)) if val_loss else None,
        "stopped_by": budget.reason or ("early stopping" if len(val_loss) < early_stop_epochs else "epochs"),
        "seconds": round(time.monotonic() - started, 1),
    }
    _write_json(out_dir / "history.json", history)
    return weights, f16, history


# --------------------------------------------------------------------------------------------
# Segmentation
# --------------------------------------------------------------------------------------------
def partial_label_loss(dice_weight: float = 1.0, smooth: float = 1.0, class_weights: Sequence[float] | None = None):
    """Cross-entropy marginalised over the allowed classes + soft Dice on known pixels.
    y_true: (batch, h, w, classes) multi-hot of the classes allowed at each pixel.
    class_weights: per-class cross-entropy weights (a pixel weighs the mean over its allowed
    classes); None = unweighted."""
    from keras import ops

    def loss(y_true, y_pred):
        n = y_pred.shape[-1]
        informative = ops.cast(ops.sum(y_true, axis=-1) < n - 0.5, y_pred.dtype)
        if class_weights is not None:
            w = ops.convert_to_tensor(np.asarray(class_weights, np.float32))
            informative = informative * ops.sum(y_true * w, axis=-1) / ops.maximum(ops.sum(y_true, axis=-1), 1.0)
        p_allowed = ops.sum(y_true * y_pred, axis=-1)
        ce = -ops.log(ops.clip(p_allowed, 1e-7, 1.0))
        ce = ops.sum(ce * informative) / ops.maximum(ops.sum(informative), 1e-6)
        if dice_weight == 0:
            return ce
        return ce + dice_weight * (1.0 - soft_dice(y_true, y_pred, smooth))

    loss.__name__ = "partial_ce_dice"
    return loss


def soft_dice(y_true, y_pred, smooth: float = 1.0):
    """Mean soft Dice over the foreground classes, on the pixels where each class is decided
    (exactly that class, or certainly not that class)."""
    from keras import ops

    exact = ops.cast(ops.sum(y_true, axis=-1, keepdims=True) < 1.5, y_pred.dtype)
    target = y_true * exact
    weight = 1.0 - y_true + target
    inter = ops.sum(weight * target * y_pred, axis=(0, 1, 2))
    denom = ops.sum(weight * (target + y_pred), axis=(0, 1, 2))
    dice = (2.0 * inter + smooth) / (denom + smooth)
    return ops.mean(dice[1:])


def dice(y_true, y_pred):  # a metric with a short name for the progress display
    return soft_dice(y_true, y_pred)


def he_initialise(model, seed: int) -> None:
    """He-normal kernels and zero biases for the ReLU convolutions (the output layer keeps its
    Glorot init). Keras' default Glorot init left this un-normalised ReLU U-Net predicting only
    background for ~80 steps; He init roughly halves that (a CPU budget matters here)."""
    import keras

    for k, layer in enumerate(model.layers):
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose)) and layer.name != "labels":
            kernel, bias = layer.get_weights()
            init = keras.initializers.HeNormal(seed=seed * 1000 + k)
            layer.set_weights([np.asarray(init(kernel.shape), np.float32), np.zeros_like(bias)])


def segmentation_arrays(samples: Sequence[ds.Sample], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Network inputs (n, size, size, 1) via the shared preprocessing contract, and allowed-class
    bit sets (n, size, size) resized with nearest neighbour like the labels."""
    x = np.empty((len(samples), size, size, 1), np.float32)
    bits = np.empty((len(samples), size, size), np.uint8)
    for i, s in enumerate(samples):
        x[i] = to_network(s.image, size)[0]
        bits[i] = labels_to_network(ds.allowed_bits(s.mask, s.known, s.image.shape), size)[0]
    return x, bits


def _segmentation_batches(x, bits, batch_size: int, steps: int, seed: int, aug: dict | None):
    import keras

    class Batches(keras.utils.PyDataset):
        """Random batches (with replacement), augmented on the fly; the rng of batch i of epoch e
        is seeded by (seed, e, i), so a run is reproducible whatever the data pipeline does."""

        def __init__(self):
            super().__init__()
            self._epoch = 0

        def __len__(self):
            return steps

        def __getitem__(self, i):
            rng = np.random.default_rng([seed, self._epoch, i])
            xs = np.empty((batch_size,) + x.shape[1:], np.float32)
            ys = np.empty((batch_size,) + bits.shape[1:], np.uint8)
            for k, j in enumerate(rng.integers(0, len(x), batch_size)):
                if aug is None:
                    xs[k, ..., 0], ys[k] = x[j, ..., 0], bits[j]
                else:
                    xs[k, ..., 0], ys[k] = augment_segmentation(x[j, ..., 0], bits[j], rng, mask_fill=1, **aug)
            return xs, ds.bits_to_multihot(ys)

        def on_epoch_end(self):
            self._epoch += 1

    return Batches()


def _evenly(items: Sequence, n: int | None) -> list:
    if n is None or len(items) <= n:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def _start_run(out_dir: str | Path, seed: int, deterministic: bool) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(seed, deterministic)
    return out_dir


def _split_by_patient(samples: Sequence[ds.Sample], val_fraction: float, seed: int, split_seed: int | None = None):
    """(split with the seed it was drawn with, train samples, validation samples); both sides must
    hold someone. The split follows the training seed unless `split_seed` fixes it."""
    split_seed = seed if split_seed is None else split_seed
    split = ds.split_patients([s.patient_id for s in samples], val_fraction, split_seed)
    train, val = ds.apply_split(samples, split)
    if not train or not val:
        raise ValueError(f"need training and validation patients (got {len(train)} / {len(val)} slices)")
    return {**split, "seed": split_seed}, train, val


def _result(weights: Path, f16: Path, history: dict) -> dict:
    """What a run produced, for config.json: files, hashes, sizes, time."""
    return {"weights": weights.name, "weights_f16": f16.name, "sha256": sha256_file(weights),
            "sha256_f16": sha256_file(f16), "bytes": weights.stat().st_size,
            "bytes_f16": f16.stat().st_size, "train_seconds": history["seconds"]}


def train_segmentation(out_dir: str | Path, *, samples: Sequence[ds.Sample] | None = None,
                       data: dict | None = None, input_size: int = SEGMENTATION_INPUT, epochs: int = 12,
                       steps_per_epoch: int = 10, batch_size: int = 16, learning_rate: float = 1e-3,
                       dice_weight: float = 1.0, patience: int = 4, val_fraction: float = 0.2,
                       val_monitor_max: int | None = 48, max_rotation_deg: float = 45.0, flips: bool = True,
                       augment_mode: str = "paper", augment: bool = True, intensity_augment: bool = False,
                       seed: int = 0, split_seed: int | None = None,
                       max_minutes: float | None = 21.0, init_weights: str | None = None,
                       class_weights: Sequence[float] | None = (1.0, 3.0, 5.0, 5.0), he_init: bool = True,
                       warmup_size: int | None = 128, warmup_epochs: int = 8, lr_plateau: float | None = 0.5,
                       synthetic_series: int = 0, evaluate: bool = True, deterministic: bool = True, verbose: int = 2,
                       cli_args: dict | None = None) -> TrainResult:
    """Train the 4-class U-Net. `samples` overrides loading (tests); otherwise `data` holds the
    keyword arguments of datasets.segmentation_samples (recorded, so evaluation can rebuild)."""
    import keras

    from pipeline.networks import build_unet

    started, out_dir = time.monotonic(), _start_run(out_dir, seed, deterministic)
    data = dict(data or {})
    if samples is None:
        print("loading segmentation data ...", flush=True)
        samples = ds.segmentation_samples(progress=verbose > 0, **data)
        data_desc = {"kind": "segmentation", "kwargs": data, **_data_provenance(data.get("data_dir"))}
    else:
        data_desc = {"kind": "segmentation", "kwargs": None, "note": "samples given in code"}
    samples = [s for s in samples if s.mask is not None]
    split, train, val = _split_by_patient(samples, val_fraction, seed, split_seed)
    _write_json(out_dir / "split.json", {**split, "val_fraction": val_fraction,
                                         "train_counts": _split_counts(train), "validation_counts": _split_counts(val)})
    config = {"task": "segmentation", "arguments": cli_args or {}, "seed": seed, "input_size": input_size,
              "epochs": epochs, "steps_per_epoch": steps_per_epoch, "batch_size": batch_size,
              "learning_rate": learning_rate, "optimizer": "Adam",
              "loss": f"partial-label cross-entropy + {dice_weight} x (1 - soft Dice over vertebra, disc, canal)",
              "patience": patience, "val_fraction": val_fraction, "val_monitor_max": val_monitor_max,
              "augmentation": {"enabled": augment, "mode": augment_mode, "max_rotation_deg": max_rotation_deg,
                               "flips": flips, "intensity": intensity_augment},
              "max_minutes": max_minutes, "init_weights": init_weights, "classes": list(SEGMENTATION_CLASSES),
              "class_weights": list(class_weights) if class_weights else None, "he_init": he_init and not init_weights,
              "lr_plateau_factor": lr_plateau,
              "warmup": {"size": warmup_size, "epochs": warmup_epochs} if warmup_size and warmup_epochs else None,
              "data": data_desc, "versions": versions()}
    _write_json(out_dir / "config.json", config)

    print(f"train: {len(train)} slices, {len(split['train'])} patients {_split_counts(train)}", flush=True)
    print(f"validation: {len(val)} slices, {len(split['validation'])} patients {_split_counts(val)}", flush=True)
    x, bits = segmentation_arrays(train, input_size)
    monitor = _evenly(sorted(val, key=lambda s: (s.patient_id, s.item)), val_monitor_max)
    xv, bv = segmentation_arrays(monitor, input_size)
    aug = {"max_rotation_deg": max_rotation_deg, "flip_horizontal": flips, "flip_vertical": flips,
           "mode": augment_mode, "intensity": intensity_augment} if augment else None
    batches = _segmentation_batches(x, bits, batch_size, steps_per_epoch, seed, aug)

    def builder():
        return build_unet(len(SEGMENTATION_CLASSES), input_size)

    model = build_unet(len(SEGMENTATION_CLASSES), None)  # any size: the warm-up runs smaller
    if init_weights:
        model.load_weights(init_weights)
    elif he_init:
        he_initialise(model, seed)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=partial_label_loss(dice_weight, class_weights=class_weights), metrics=[dice])
    print(f"training U-Net ({model.count_params():,} parameters), validation on {len(monitor)} slices", flush=True)
    warmup_history: dict = {}
    if warmup_size and warmup_epochs and warmup_size != input_size:
        # Progressive resizing: the same fully convolutional weights first learn at a quarter of
        # the cost per step, which gets them past the all-background plateau early on a CPU.
        print(f"warm-up at {warmup_size} px: {warmup_epochs} epochs x {steps_per_epoch} steps x batch {batch_size}",
              flush=True)
        xw, bw = segmentation_arrays(train, warmup_size)
        warm = model.fit(_segmentation_batches(xw, bw, batch_size, steps_per_epoch, seed + 1, aug),
                         epochs=warmup_epochs, verbose=verbose)
        warmup_history = {f"warmup_{k}": [float(v) for v in vals] for k, vals in warm.history.items()}
        del xw, bw
    left = None if max_minutes is None else max(1.0, max_minutes - (time.monotonic() - started) / 60)
    budget, callbacks = _callbacks(out_dir / "unet.weights.h5", patience, left, epochs, verbose, lr_plateau)
    print(f"training at {input_size} px: {epochs} epochs x {steps_per_epoch} steps x batch {batch_size}", flush=True)
    fit = model.fit(batches, validation_data=(xv, ds.bits_to_multihot(bv)), validation_batch_size=8,
                    epochs=epochs, callbacks=callbacks, verbose=verbose)
    fit.history.update(warmup_history)
    weights, f16, history = _finish(out_dir, "unet", model, builder, fit, budget, epochs, started)
    config["result"] = _result(weights, f16, history)
    _write_json(out_dir / "config.json", config)
    metrics = None
    if evaluate:
        from training.evaluate import evaluate_segmentation, print_segmentation_summary, write_segmentation_report

        print(f"evaluating {f16.name} on all {len(val)} validation slices ...", flush=True)
        metrics, predictions = evaluate_segmentation(f16, val, input_size=input_size, return_predictions=True,
                                                     synthetic_series=synthetic_series)
        write_segmentation_report(metrics, val, predictions, out_dir / "eval", out_dir / "history.json")
        print_segmentation_summary(metrics)
    print(f"done in {(time.monotonic() - started) / 60:.1f} min: {out_dir}", flush=True)
    return TrainResult(out_dir, weights, f16, history, metrics)


# --------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------
def _classifier_batches(x, y, batch_size: int, seed: int, augment: bool, class_weights: np.ndarray):
    import keras

    n_classes = len(LORDOSIS_CLASSES)

    class Batches(keras.utils.PyDataset):
        """Every training image once per epoch (seeded shuffle), one augmentation draw each."""

        def __init__(self):
            super().__init__()
            self._epoch = 0
            self._order = np.random.default_rng([seed, 0]).permutation(len(x))

        def __len__(self):
            return math.ceil(len(x) / batch_size)

        def __getitem__(self, i):
            idx = self._order[i * batch_size:(i + 1) * batch_size]
            rng = np.random.default_rng([seed, self._epoch, i, 1])
            xs = np.stack([augment_classification(x[j, ..., 0], rng) if augment else x[j, ..., 0] for j in idx])
            onehot = np.eye(n_classes, dtype=np.float32)[y[idx]]
            return xs[..., None], onehot, class_weights[y[idx]].astype(np.float32)

        def on_epoch_end(self):
            self._epoch += 1
            self._order = np.random.default_rng([seed, self._epoch]).permutation(len(x))

    return Batches()


def train_classifier(out_dir: str | Path, *, samples: Sequence[ds.Sample] | None = None, data: dict | None = None,
                     input_size: int = CLASSIFIER_INPUT, epochs: int = 15, batch_size: int = 32,
                     learning_rate: float = 1e-3, patience: int = 5, val_fraction: float = 0.2,
                     augment: bool = True, class_weighting: bool = True, baseline: str | None = None,
                     baseline_weights: str | None = None, freeze_base: bool = False, dense: int = 128,
                     seed: int = 0, split_seed: int | None = None, max_minutes: float | None = 8.0,
                     evaluate: bool = True,
                     deterministic: bool = True, verbose: int = 2, cli_args: dict | None = None) -> TrainResult:
    """Train Deteclordose (or a baseline) on samples carrying a reference LLA (phantom mid
    slices by default: `data` = keyword arguments of datasets.classifier_samples)."""
    import keras

    from pipeline.networks import build_deteclordose

    started, out_dir = time.monotonic(), _start_run(out_dir, seed, deterministic)
    data = dict(data or {})
    if samples is None:
        print("making / loading synthetic phantom mid slices ...", flush=True)
        samples = ds.classifier_samples(progress=verbose > 0, **data)
        data_desc = {"kind": "classifier", "kwargs": data, "note": "synthetic phantoms only (exact LLA)"}
    else:
        data_desc = {"kind": "classifier", "kwargs": None, "note": "samples given in code"}
    samples = [s for s in samples if s.lla_deg is not None]
    split, train, val = _split_by_patient(samples, val_fraction, seed, split_seed)
    y = np.array([lordosis_class_index(s.lla_deg) for s in train])
    yv = np.array([lordosis_class_index(s.lla_deg) for s in val])
    counts = np.bincount(y, minlength=len(LORDOSIS_CLASSES))
    # balanced class weights: the rule's normal band is narrower than the other two
    class_weights = (len(y) / (len(counts) * np.maximum(counts, 1))) if class_weighting else np.ones(len(counts))
    name = baseline or "deteclordose"
    _write_json(out_dir / "split.json", {**split, "val_fraction": val_fraction,
                                         "train_class_counts": dict(zip(LORDOSIS_CLASSES, counts.tolist())),
                                         "validation_class_counts": dict(zip(LORDOSIS_CLASSES, np.bincount(
                                             yv, minlength=len(LORDOSIS_CLASSES)).tolist()))})
    config = {"task": "classifier", "model": name, "arguments": cli_args or {}, "seed": seed,
              "input_size": input_size, "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
              "optimizer": "Adam", "loss": "categorical cross-entropy (class-weighted)" if class_weighting
              else "categorical cross-entropy", "class_weights": class_weights.tolist(), "patience": patience,
              "val_fraction": val_fraction, "augmentation": {"enabled": augment, "rotations_deg": [5, 7, 10],
                                                             "zoom": 0.1},
              "rule_thresholds_deg": [39.0, 53.0], "classes": list(LORDOSIS_CLASSES), "dense": dense,
              "baseline_weights": baseline_weights, "freeze_base": freeze_base, "max_minutes": max_minutes,
              "data": data_desc, "versions": versions()}
    _write_json(out_dir / "config.json", config)
    print(f"train: {len(train)} images {dict(zip(LORDOSIS_CLASSES, counts.tolist()))}; "
          f"validation: {len(val)} images", flush=True)

    x = classifier_input([s.image for s in train], input_size)
    xv = classifier_input([s.image for s in val], input_size)

    def builder():
        if baseline:
            return build_baseline(baseline, input_size, None, freeze_base)
        return build_deteclordose(input_size, dense=dense)

    model = build_baseline(baseline, input_size, baseline_weights, freeze_base) if baseline else builder()
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="categorical_crossentropy",
                  metrics=["accuracy"])
    budget, callbacks = _callbacks(out_dir / f"{name}.weights.h5", patience, max_minutes, epochs, verbose)
    print(f"training {name} ({model.count_params():,} parameters): up to {epochs} epochs, batch {batch_size}",
          flush=True)
    fit = model.fit(_classifier_batches(x, y, batch_size, seed, augment, class_weights),
                    validation_data=(xv, np.eye(len(LORDOSIS_CLASSES), dtype=np.float32)[yv]),
                    validation_batch_size=batch_size, epochs=epochs, callbacks=callbacks, verbose=verbose)
    weights, f16, history = _finish(out_dir, name, model, builder, fit, budget, epochs, started)
    config["result"] = _result(weights, f16, history)
    _write_json(out_dir / "config.json", config)
    metrics = None
    if evaluate:
        from training.evaluate import evaluate_classifier, write_classifier_report

        metrics = evaluate_classifier(f16, val, input_size=input_size, baseline=baseline, dense=dense)
        write_classifier_report(metrics, out_dir / "eval", out_dir / "history.json")
        print(f"  validation accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}", flush=True)
    print(f"done in {(time.monotonic() - started) / 60:.1f} min: {out_dir}", flush=True)
    return TrainResult(out_dir, weights, f16, history, metrics)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lumbarnode train", description="Train the U-Net or Deteclordose.")
    sub = p.add_subparsers(dest="task", required=True)

    def common(q: argparse.ArgumentParser, epochs: int, batch: int, patience: int, minutes: float) -> None:
        q.add_argument("--out", required=True, help="output folder (weights, history, split, config, eval/)")
        q.add_argument("--data-dir", default=None, help="../shared/data by default (or LUMBARNODE_SHARED_DATA)")
        q.add_argument("--cache-dir", default="default", help="phantom cache (default ~/.cache/lumbarnode)")
        q.add_argument("--epochs", type=int, default=epochs)
        q.add_argument("--batch-size", type=int, default=batch)
        q.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (paper: 1e-3)")
        q.add_argument("--patience", type=int, default=patience, help="early-stopping patience (epochs)")
        q.add_argument("--val-fraction", type=float, default=0.2, help="patients for validation (paper: 0.2)")
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--split-seed", type=int, default=None,
                       help="seed of the patient split (default: --seed); fix it to compare training seeds "
                            "on the same validation patients")
        q.add_argument("--max-minutes", type=float, default=minutes, help="stop before exceeding (0 = no limit)")
        q.add_argument("--no-augment", action="store_true")
        q.add_argument("--no-eval", action="store_true", help="skip the validation report at the end")
        q.add_argument("--nondeterministic", action="store_true", help="allow non-deterministic TF kernels")
        q.add_argument("--verbose", type=int, default=None, help="Keras verbosity: 1 progress bar, 2 one line "
                                                                  "per epoch (default: 1 on a terminal, else 2)")

    s = sub.add_parser("segmentation", help="the 4-class U-Net (background, vertebra, disc, canal)")
    common(s, epochs=80, batch=8, patience=10, minutes=85.0)
    s.add_argument("--sources", default=",".join(ds.DEFAULT_SEGMENTATION_SOURCES),
                   help="comma-separated subsets: " + ", ".join(ds.DEFAULT_SEGMENTATION_SOURCES))
    s.add_argument("--phantoms", type=int, default=128, help="synthetic volumes (each gives --phantom-slices)")
    s.add_argument("--phantom-slices", type=int, default=3)
    s.add_argument("--per-level-slices", type=int, default=5, help="slices per myosegmentum / chu volume")
    s.add_argument("--spider-max-slices", type=int, default=None, help="cap of slices per SPIDER patient")
    s.add_argument("--input-size", type=int, default=SEGMENTATION_INPUT)
    s.add_argument("--steps-per-epoch", type=int, default=20)
    s.add_argument("--dice-weight", type=float, default=1.0)
    s.add_argument("--val-monitor-max", type=int, default=48, help="validation slices checked every epoch")
    s.add_argument("--max-rotation", type=float, default=45.0)
    s.add_argument("--no-flips", action="store_true")
    s.add_argument("--augment-mode", choices=("paper", "combined"), default="paper")
    s.add_argument("--spider-sacrum-unknown", action="store_true",
                   help="SPIDER's unlabelled sacrum may be vertebra (not taught as background; model card)")
    s.add_argument("--intensity-augment", action="store_true",
                   help="also vary gamma and shading (beyond the paper's augmentation)")
    s.add_argument("--init-weights", default=None, help="start from these weights (fine-tuning)")
    s.add_argument("--class-weights", type=float, nargs=4, default=(1.0, 3.0, 5.0, 5.0),
                   metavar=("BG", "VERT", "DISC", "CANAL"), help="cross-entropy class weights")
    s.add_argument("--no-he-init", action="store_true", help="keep Keras' default Glorot initialisation")
    s.add_argument("--warmup-size", type=int, default=128, help="progressive resizing: first epochs at this "
                                                                "size (0 = none)")
    s.add_argument("--warmup-epochs", type=int, default=16)
    s.add_argument("--synthetic-series", type=int, default=120,
                   help="fresh synthetic series on which the final evaluation measures the LLA (0 = none)")
    s.add_argument("--lr-plateau", type=float, default=0.5, help="multiply the learning rate by this when "
                                                                 "validation loss stalls (0 = constant, as the paper)")

    c = sub.add_parser("classifier", help="Deteclordose (or --baseline) on synthetic phantom mid slices")
    common(c, epochs=40, batch=32, patience=8, minutes=20.0)
    c.add_argument("--phantoms", type=int, default=600, help="synthetic volumes (one mid slice each)")
    c.add_argument("--lla-range", type=float, nargs=2, default=(15.0, 77.0), metavar=("MIN", "MAX"),
                   help="LLA drawn uniformly in this range (degrees)")
    c.add_argument("--input-size", type=int, default=CLASSIFIER_INPUT)
    c.add_argument("--dense", type=int, default=128, help="Deteclordose dense width (paper: 128)")
    c.add_argument("--no-class-weights", action="store_true")
    c.add_argument("--baseline", choices=BASELINES, default=None,
                   help="train a keras.applications baseline instead (heavy on a CPU)")
    c.add_argument("--baseline-weights", default=None,
                   help="local ImageNet 'notop' weights file (nothing is downloaded; default: random init)")
    c.add_argument("--freeze-base", action="store_true", help="transfer learning: train the head only")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    verbose = args.verbose if args.verbose is not None else (1 if sys.stdout.isatty() else 2)
    cli_args = {**vars(args), "argv": list(argv) if argv is not None else sys.argv[1:]}
    max_minutes = args.max_minutes or None
    common = dict(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, patience=args.patience,
                  val_fraction=args.val_fraction, seed=args.seed, split_seed=args.split_seed,
                  max_minutes=max_minutes,
                  augment=not args.no_augment, evaluate=not args.no_eval, deterministic=not args.nondeterministic,
                  verbose=verbose, cli_args=cli_args, input_size=args.input_size)
    if args.task == "segmentation":
        data = {"sources": [s.strip() for s in args.sources.split(",") if s.strip()], "data_dir": args.data_dir,
                "phantom_count": args.phantoms, "phantom_slices": args.phantom_slices,
                "per_level_slices": args.per_level_slices, "spider_max_slices_per_patient": args.spider_max_slices,
                "cache_dir": args.cache_dir}
        if args.spider_sacrum_unknown:  # only then: the shipped run's config rebuilds as it was
            data["spider_sacrum_unknown"] = True
        train_segmentation(args.out, data=data, steps_per_epoch=args.steps_per_epoch, dice_weight=args.dice_weight,
                           val_monitor_max=args.val_monitor_max, max_rotation_deg=args.max_rotation,
                           flips=not args.no_flips, augment_mode=args.augment_mode,
                           intensity_augment=args.intensity_augment, init_weights=args.init_weights,
                           class_weights=args.class_weights, he_init=not args.no_he_init,
                           warmup_size=args.warmup_size or None, warmup_epochs=args.warmup_epochs,
                           lr_plateau=args.lr_plateau or None, synthetic_series=args.synthetic_series,
                           **common)
    else:
        data = {"count": args.phantoms, "lla_range": list(args.lla_range), "cache_dir": args.cache_dir}
        train_classifier(args.out, data=data, class_weighting=not args.no_class_weights, baseline=args.baseline,
                         baseline_weights=args.baseline_weights, freeze_base=args.freeze_base, dense=args.dense,
                         **common)
    return 0


if __name__ == "__main__":
    sys.exit(main())
