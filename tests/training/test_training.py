"""training/: data loaders, patient-level splits, held-out refusal, augmentation, Otsu false-colour
conversion, the partial-label loss, metrics, and a tiny training run of each network."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from training import datasets as ds
from training.augment import augment_classification, augment_segmentation, paper_classification_expansion, warp
from training.evaluate import classification_metrics, dice_iou, overlap_counts


# --------------------------------------------------------------------------------------------
# Splits and held-out ids
# --------------------------------------------------------------------------------------------
def test_patient_split_never_leaks_and_is_deterministic():
    ids = [f"spider-t2-slices:{i}" for i in range(31)] + [f"phantom:{i}" for i in range(24)] \
        + ["vesal-t2-slices:unknown"] + [f"chu2015-vb2:{i:02d}" for i in range(17)]
    split = ds.split_patients(ids * 3, seed=5)  # repeated ids = several slices of one patient
    assert not set(split["train"]) & set(split["validation"])
    assert set(split["train"]) | set(split["validation"]) == set(ids)
    assert "vesal-t2-slices:unknown" in split["train"]  # unknown patient identity: training only
    spider_val = [p for p in split["validation"] if p.startswith("spider")]
    assert len(spider_val) == round(0.2 * 31)
    assert ds.split_patients(list(reversed(ids)), seed=5) == split  # order does not matter
    assert ds.split_patients(ids, seed=6) != split

    samples = [ds.Sample(np.zeros((4, 4)), np.zeros((4, 4), np.uint8), ds.FOREGROUND, None, pid, pid.split(":")[0], pid)
               for pid in ids for _ in range(2)]
    train, val = ds.apply_split(samples, split)
    assert not {s.patient_id for s in train} & {s.patient_id for s in val}
    with pytest.raises(AssertionError):
        ds.apply_split(samples, {"train": ids[:3], "validation": ids[2:4]})


def _fake_data_dir(root: Path, spider_ids: list[str], held: dict) -> Path:
    (root / "spider-t2-slices" / "images").mkdir(parents=True)
    (root / "spider-t2-slices" / "masks").mkdir(parents=True)
    for pid in spider_ids:
        for sub in ("images", "masks"):
            cv2.imwrite(str(root / "spider-t2-slices" / sub / f"{pid}_7.png"), np.zeros((16, 16), np.uint8))
    (root / "MANIFEST.json").write_text(json.dumps({"held_out_ids": held}))
    return root


def test_held_out_ids_are_refused(tmp_path):
    held = {"spider-t2-slices (SPIDER patient ids)": ["18", "22"],
            "myosegmentum-vb3 duplicate ids never used (copy -> original)": {"19": "18"}}
    clean = _fake_data_dir(tmp_path / "clean", ["5", "7"], held)
    assert {s.patient_id for s in ds.load_spider(clean)} == {"spider-t2-slices:5", "spider-t2-slices:7"}
    dirty = _fake_data_dir(tmp_path / "dirty", ["5", "18"], held)
    with pytest.raises(ds.HeldOutError, match="18"):
        ds.load_spider(dirty, patients=["5"])  # refused even when the held-out patient is not asked for
    with pytest.raises(ds.HeldOutError):
        ds.check_folder(dirty)
    assert ds.held_out_ids(dirty)["myosegmentum-vb3"] == {"19"}  # duplicates: the copy id, not the original
    sample = ds.Sample(np.zeros((2, 2)), None, frozenset(), None, "spider-mha:22", "spider-mha", "22_t2.mha")
    with pytest.raises(ds.HeldOutError):
        ds.check_no_held_out([sample], ds.held_out_ids(dirty))
    (tmp_path / "nomanifest" / "spider-t2-slices" / "images").mkdir(parents=True)
    with pytest.raises(FileNotFoundError):
        ds.load_spider(tmp_path / "nomanifest")


# --------------------------------------------------------------------------------------------
# Loaders on the real data
# --------------------------------------------------------------------------------------------
def test_shared_folder_holds_no_held_out_ids(shared_data):
    ds.check_folder(shared_data)


def test_spider_and_vesal_loaders(shared_data):
    spider = ds.load_spider(shared_data, patients=["107"])
    assert len(spider) == 14 and all(s.patient_id == "spider-t2-slices:107" for s in spider)
    s = spider[7]
    assert s.image.shape == s.mask.shape == (640, 512) and s.spacing_mm is None
    assert set(np.unique(s.mask)) == {0, 1, 2, 3} and s.known == {1, 2, 3}
    assert set(np.unique(ds.allowed_bits(s.mask, s.known))) == {1, 2, 4, 8}  # exact everywhere
    # --spider-sacrum-unknown: exact but under the lowest disc, where the unlabelled sacrum may be
    marked = ds.load_spider(shared_data, patients=["107"], sacrum_unknown=True)[7]
    assert set(np.unique(ds.allowed_bits(marked.mask, marked.known))) == {1, 2, 4, 8, 1 | 2}

    vesal = ds.load_vesal(shared_data)
    assert len(vesal) == 20 and all(v.image.shape == (256, 256) for v in vesal)
    assert [v.item[-6:-4] for v in vesal if v.mask is None] == ["00", "05", "10"]  # empty masks: unlabelled
    v = vesal[2]
    assert set(np.unique(v.mask)) == {0, 1, 2}
    bits = ds.allowed_bits(v.mask, v.known)
    assert set(np.unique(bits[v.mask == 0])) == {1 | 2 | 8}  # background may be vertebra (posterior) or canal


@pytest.mark.parametrize("subset, shape", [(ds.MYO, (224, 224)), (ds.CHU, (381, 381))])
def test_per_level_loaders_give_bodies_only(shared_data, subset, shape):
    samples = ds.load_per_level(subset, shared_data, ids=["02", "04"])
    assert len(samples) == 2
    for s in samples:
        assert s.image.shape == s.mask.shape == shape and s.spacing_mm == (1.0, 1.0)
        assert set(np.unique(s.mask)) == {0, 1, 2, ds.NOT_VERTEBRA, ds.UNKNOWN}
        assert (s.mask[s.extra["level_labels"] > 0] == 1).all()  # every labelled body, nothing else
        assert (s.mask == 1).sum() == (s.extra["level_labels"] > 0).sum()
        bg_cols = np.nonzero(s.mask == 0)[1]
        assert bg_cols.max() < np.nonzero(s.mask == 1)[1].max()  # the certain background is anterior
        # one disc space between each pair of neighbouring bodies, never on a body
        spaces = cv2.connectedComponents(((s.mask == ds.NOT_VERTEBRA) | (s.mask == 2)).astype(np.uint8))[0] - 1
        assert spaces >= len(np.unique(s.extra["level_labels"])) - 2
        discs = cv2.connectedComponents((s.mask == 2).astype(np.uint8))[0] - 1
        assert discs >= 4  # a disc core between L1..L5 at least (thin thoracic discs may erode away)
        bits = ds.allowed_bits(s.mask, s.known)
        assert (bits[s.mask == ds.NOT_VERTEBRA] & (1 << ds.VERTEBRA) == 0).all()


def test_disc_spaces_only_between_neighbouring_levels():
    labels = np.zeros((60, 30), np.uint8)
    labels[5:15, 5:25], labels[20:30, 5:25], labels[45:55, 5:25] = 20, 21, 23  # L1, L2, (no L3), L4
    spaces = ds.disc_spaces(labels)
    rows = np.unique(np.nonzero(spaces)[0])
    assert rows.min() >= 15 and rows.max() <= 19  # between L1 and L2 (bodies grown by a pixel excluded)
    assert spaces[16:19, 6:24].all() and not spaces[31:44].any()  # L2-L4: a level is missing, no disc


def test_fastmonai_loader_is_unlabelled(shared_data):
    samples = ds.load_fastmonai(shared_data)
    assert len(samples) == 16 and all(s.mask is None for s in samples)
    assert samples[0].image.shape == (400, 400) and samples[0].spacing_mm == pytest.approx((0.78, 0.78), abs=1e-3)


def test_phantom_slices_map_to_the_four_classes(tmp_path):
    from pipeline.synthetic.phantom import LABELS

    assert {v: int(ds.PHANTOM_TO_CLASS[v]) for v in LABELS.values()} == {
        11: 1, 12: 1, 20: 1, 21: 1, 22: 1, 23: 1, 24: 1, 26: 1, 50: 1, 30: 2, 40: 3}
    samples = ds.load_phantoms(1, seed=3, slices=1, cache_dir=tmp_path)
    s = samples[0]
    assert set(np.unique(s.mask)) == {0, 1, 2, 3} and s.lla_deg is not None and s.spacing_mm == (0.9, 0.9)
    assert np.array_equal(ds.load_phantoms(1, seed=3, slices=1, cache_dir=tmp_path)[0].image, s.image)  # cached


# --------------------------------------------------------------------------------------------
# Augmentation, false colour, .mha
# --------------------------------------------------------------------------------------------
def test_augmentation_moves_image_and_mask_together():
    rng = np.random.default_rng(0)
    mask = cv2.resize(rng.integers(0, 4, (8, 8)).astype(np.uint8), (64, 64), interpolation=cv2.INTER_NEAREST)
    image = mask.astype(np.float32) * 10.0  # the image IS the mask, scaled
    for mode in ("paper", "combined"):
        for k in range(20):
            img, m = augment_segmentation(image, mask, np.random.default_rng(k), mode=mode, mask_fill=0)
            assert img.shape == m.shape == (64, 64) and m.dtype == np.uint8
            agree = np.mean(np.rint(img / 10.0) == m)
            assert agree > 0.9, (mode, k, agree)  # only interpolated edges may differ
    a = augment_segmentation(image, mask, np.random.default_rng(7))
    b = augment_segmentation(image, mask, np.random.default_rng(7))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    flipped, fm = augment_segmentation(image, mask, np.random.default_rng(1), max_rotation_deg=0, mode="combined")
    assert np.array_equal(np.rint(flipped / 10.0).astype(np.uint8), fm)  # flips alone are exact
    # a rotation turns a point the way OpenCV's angle says (counter-clockwise on screen)
    dot = np.zeros((65, 65), np.float32)
    dot[32, 52] = 1.0
    assert np.unravel_index(np.argmax(warp(dot, 90.0)), dot.shape) == (12, 32)


def test_intensity_augmentation_changes_contrast_not_geometry_and_leaves_the_paper_draws_alone():
    rng = np.random.default_rng(3)
    mask = cv2.resize(rng.integers(0, 4, (8, 8)).astype(np.uint8), (64, 64), interpolation=cv2.INTER_NEAREST)
    image = (mask.astype(np.float32) + 1.0) / 4.0  # four grey levels, one per class
    for k in range(20):
        plain, plain_mask = augment_segmentation(image, mask, np.random.default_rng(k))
        varied, varied_mask = augment_segmentation(image, mask, np.random.default_rng(k), intensity=True)
        assert np.array_equal(plain_mask, varied_mask)  # same geometric draw: the new draws come after
        assert varied.min() == 0.0 and varied.max() == pytest.approx(1.0)  # the network's 0..1 contract
        inside = (plain_mask == 3) & (cv2.erode(plain_mask, np.ones((3, 3), np.uint8)) == 3)  # away from edges
        assert not np.allclose(varied[inside], plain[inside], atol=0.02)  # the contrast did change
    ratios = [np.median(augment_segmentation(image, mask, np.random.default_rng(k), max_rotation_deg=0,
                                             flip_horizontal=False, flip_vertical=False, intensity=True)[0][mask == 1])
              for k in range(40)]
    assert max(ratios) - min(ratios) > 0.1  # class 1's brightness relative to the others varies between draws


def test_classification_augmentation_is_label_preserving_geometry():
    image = np.zeros((64, 64), np.float32)
    image[20:44, 28:36] = 255.0
    outs = [augment_classification(image, np.random.default_rng(k)) for k in range(12)]
    assert all(o.shape == image.shape for o in outs)
    assert any(np.array_equal(o, image) for o in outs) and any(not np.array_equal(o, image) for o in outs)
    assert len(paper_classification_expansion(image)) == 4


def test_false_colour_labels_binarise_with_otsu():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 20, (120, 100, 3)).astype(np.uint8)  # dark, noisy background
    truth = np.zeros((120, 100), np.uint8)
    colours = [(200, 30, 30), (40, 180, 60), (60, 80, 220), (230, 220, 50), (200, 60, 200), (250, 140, 0)]
    for k, colour in enumerate(colours):  # L1..L5, S: one colour each, as in the paper's label images
        rgb[10 + 17 * k: 24 + 17 * k, 30:70] = colour
        truth[10 + 17 * k: 24 + 17 * k, 30:70] = 1
    mask, threshold = ds.false_colour_to_binary(rgb)
    assert np.array_equal(mask, truth)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    assert threshold == pytest.approx(cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[0])
    assert 19 <= threshold < 80


def _write_mha(path: Path, array: np.ndarray, direction: np.ndarray, compressed: bool) -> None:
    data = np.ascontiguousarray(array).astype("<i2").tobytes()
    if compressed:
        data = zlib.compress(data)
    header = ["ObjectType = Image", "NDims = 3", "BinaryData = True", "BinaryDataByteOrderMSB = False",
              f"CompressedData = {compressed}", "TransformMatrix = " + " ".join(str(v) for v in direction.ravel()),
              "ElementSpacing = 0.5 0.6 3.3", "DimSize = " + " ".join(str(d) for d in array.shape[::-1]),
              "ElementType = MET_SHORT", "ElementDataFile = LOCAL"]
    path.write_bytes(("\n".join(header) + "\n").encode() + data)


@pytest.mark.parametrize("compressed", [False, True])
def test_mha_reader_and_orientation(tmp_path, compressed):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 300, (4, 6, 5)).astype(np.int16)  # [k, j, i]
    # axes i, j, k toward posterior, inferior, left: already the canonical layout
    canonical = np.array([[0, 1, 0], [0, 0, -1], [1, 0, 0]], float)
    _write_mha(tmp_path / "a.mha", array, canonical, compressed)
    read, spacing, direction = ds.read_mha(tmp_path / "a.mha")
    assert np.array_equal(read, array) and np.allclose(spacing, (0.5, 0.6, 3.3)) and np.allclose(direction, canonical)
    out, sp = ds.mha_to_canonical(read, spacing, direction)
    assert np.array_equal(out, array) and sp == pytest.approx((3.3, 0.6, 0.5))
    # axes i, j, k toward left, posterior, superior (an LPS-ordered volume)
    lps = np.eye(3)
    _write_mha(tmp_path / "b.mha", array, lps, compressed)
    out, sp = ds.mha_to_canonical(*ds.read_mha(tmp_path / "b.mha"))
    expected = np.transpose(array, (2, 0, 1))[:, ::-1, :]  # slices = i, rows = -k, cols = j
    assert np.array_equal(out, expected) and sp == pytest.approx((0.5, 3.3, 0.6))
    mask = np.zeros_like(array)
    mask[1:3, 2, 2], mask[1:3, 3, 2], mask[1:3, 4, 2] = 3, 100, 203  # vertebra, canal, disc
    _write_mha(tmp_path / "m.mha", mask, canonical, compressed)
    _write_mha(tmp_path / "12_t2.mha", array, canonical, compressed)
    samples = ds.load_spider_mha(tmp_path / "12_t2.mha", tmp_path / "m.mha", held_out={})
    assert [s.patient_id for s in samples] == ["spider-mha:12"] * 2
    assert (samples[0].mask[2:5, 2] == [1, 3, 2]).all()
    with pytest.raises(ds.HeldOutError):
        ds.load_spider_mha(tmp_path / "12_t2.mha", held_out={"spider-mha": frozenset({"12"})})


# --------------------------------------------------------------------------------------------
# Loss and metrics
# --------------------------------------------------------------------------------------------
def test_partial_label_loss_marginalises_unknown_classes():
    from training.train import partial_label_loss

    loss = partial_label_loss(dice_weight=0.0)
    pred = np.full((1, 2, 2, 4), 0.25, np.float32)
    assert float(loss(np.ones((1, 2, 2, 4), np.float32), pred)) == pytest.approx(0.0, abs=1e-6)  # unknown: free
    onehot = np.zeros((1, 2, 2, 4), np.float32)
    onehot[..., 1] = 1
    assert float(loss(onehot, pred)) == pytest.approx(np.log(4), rel=1e-5)  # exact: categorical CE
    bg_or_canal = np.zeros((1, 2, 2, 4), np.float32)
    bg_or_canal[..., [0, 3]] = 1
    assert float(loss(bg_or_canal, pred)) == pytest.approx(np.log(2), rel=1e-5)


def test_dice_and_iou_on_hand_built_masks():
    truth = np.zeros((20, 20), np.uint8)
    truth[5:15, 0:10] = 1
    assert dice_iou(truth, truth)[1] == (1.0, 1.0)
    disjoint = np.zeros_like(truth)
    disjoint[5:15, 10:20] = 1
    assert dice_iou(disjoint, truth)[1] == (0.0, 0.0)
    half = np.zeros_like(truth)
    half[5:15, 5:15] = 1  # 50 of 100 pixels shared, both 100 pixels
    d, i = dice_iou(half, truth)[1]
    assert d == pytest.approx(0.5) and i == pytest.approx(1 / 3)
    assert np.isnan(dice_iou(truth, truth)[2][0])  # absent and not predicted: not scored
    # a class the source did not label is not scored where it could be present
    bits = ds.allowed_bits(truth, frozenset({2}))  # Vesal-like: a 0 may be vertebra or canal
    canal_pred = np.full_like(truth, 3)
    assert overlap_counts(canal_pred, bits)[3].tolist() == [0, 100, 0]  # only the vertebra pixels say "not canal"


def test_classification_metrics():
    m = classification_metrics([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["per_class"]["normal"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["hypolordosis"]["recall"] == pytest.approx(0.5)
    assert m["macro_f1"] == pytest.approx(np.mean([0.5, 0.8, 2 / 3]))


# --------------------------------------------------------------------------------------------
# Tiny training runs
# --------------------------------------------------------------------------------------------
def _toy_spines(n: int, size: int = 64, seed: int = 0) -> list[ds.Sample]:
    """Stacks of bright blocks (vertebrae) with darker gaps (discs) and a bright strip (canal)."""
    rng = np.random.default_rng(seed)
    samples = []
    for k in range(n):
        image = rng.normal(0.1, 0.03, (size, size)).astype(np.float32)
        mask = np.zeros((size, size), np.uint8)
        left, top = int(rng.integers(8, 20)), int(rng.integers(2, 8))
        for level in range(5):
            r = top + level * 11
            mask[r:r + 8, left:left + 16], image[r:r + 8, left:left + 16] = 1, 0.6
            mask[r + 8:r + 11, left:left + 16], image[r + 8:r + 11, left:left + 16] = 2, 0.35
        mask[top:top + 55, left + 18:left + 23], image[top:top + 55, left + 18:left + 23] = 3, 0.95
        samples.append(ds.Sample(image, mask, ds.FOREGROUND, (1.0, 1.0), f"toy:{k}", "toy", f"toy{k}",
                                 lla_deg=float(rng.uniform(15, 77))))
    return samples


@pytest.fixture(scope="module")
def tiny_segmentation_run(tmp_path_factory):
    from training.train import train_segmentation

    return train_segmentation(tmp_path_factory.mktemp("unet"), samples=_toy_spines(10), input_size=64, epochs=3,
                              steps_per_epoch=6, batch_size=4, val_monitor_max=None, augment=False, max_minutes=None,
                              warmup_size=None, deterministic=False, verbose=0, patience=5)


@pytest.fixture(scope="module")
def tiny_classifier_run(tmp_path_factory):
    from training.train import train_classifier

    return train_classifier(tmp_path_factory.mktemp("deteclordose"), samples=_toy_spines(10), input_size=64,
                            epochs=2, batch_size=4, dense=8, max_minutes=None, deterministic=False, verbose=0)


def test_tiny_segmentation_run_lowers_the_loss_and_writes_its_files(tiny_segmentation_run):
    result, tmp_path = tiny_segmentation_run, tiny_segmentation_run.out_dir
    loss = result.history["history"]["loss"]
    assert loss[-1] < loss[0]
    for name in ("unet.weights.h5", "unet.f16.weights.h5", "weights.sha256", "history.json", "split.json",
                 "config.json", "eval/metrics.json", "eval/overlays.png"):
        assert (tmp_path / name).is_file(), name
    import h5py

    with h5py.File(result.weights_f16) as f16, h5py.File(result.weights) as f32:
        dtypes16, dtypes32 = [], []
        f16.visititems(lambda n, o: dtypes16.append(o.dtype) if hasattr(o, "dtype") else None)
        f32.visititems(lambda n, o: dtypes32.append(o.dtype) if hasattr(o, "dtype") else None)
    assert set(dtypes16) == {np.dtype("float16")} and set(dtypes32) == {np.dtype("float32")}
    assert len(dtypes16) == len(dtypes32) == 2 * 23  # kernel + bias of 23 layers: no optimizer state
    split = json.loads((tmp_path / "split.json").read_text())
    assert len(split["validation"]) == 2 and not set(split["train"]) & set(split["validation"])
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["seed"] == 0 and "tensorflow" in config["versions"] and config["result"]["sha256"]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics["mean_over_patients"]) <= {"vertebra", "disc", "canal"}
    assert metrics["identification"]["slices"] == 0  # toy spines carry no per-level labels
    assert metrics["l1_l5_angle_real"]["n"] == 0 and "lla_synthetic" not in metrics


def test_tiny_classifier_run_writes_its_files(tiny_classifier_run):
    result, tmp_path = tiny_classifier_run, tiny_classifier_run.out_dir
    for name in ("deteclordose.weights.h5", "deteclordose.f16.weights.h5", "history.json", "split.json",
                 "config.json", "eval/metrics.json"):
        assert (tmp_path / name).is_file(), name
    assert len(result.history["history"]["loss"]) == 2
    assert set(result.metrics) >= {"accuracy", "macro_f1", "macro_precision", "macro_recall", "confusion_matrix"}


def test_package_reports_other_seeds_and_refuses_other_validation_patients(tiny_segmentation_run,
                                                                          tiny_classifier_run, tmp_path):
    from training.package import main as package
    from training.train import train_segmentation

    def seg_run(seed, split_seed):
        return train_segmentation(tmp_path / f"unet{seed}_{split_seed}", samples=_toy_spines(10), input_size=64,
                                  epochs=1, steps_per_epoch=2, batch_size=4, val_monitor_max=None, augment=False,
                                  max_minutes=None, warmup_size=None, deterministic=False, verbose=0,
                                  seed=seed, split_seed=split_seed).out_dir

    runs = [str(tiny_segmentation_run.out_dir), str(tiny_classifier_run.out_dir)]
    same = seg_run(4, 0)
    assert package([*runs, "--out", str(tmp_path / "a"), "--other-seeds", str(same)]) == 0
    card = (tmp_path / "a" / "MODEL_CARD.md").read_text()
    table = card.split("### Run-to-run variation", 1)[1]
    assert "| 0 (shipped) |" in table and "| 4 |" in table

    other = next(r for r in (seg_run(s, None) for s in (3, 4, 5))
                 if json.loads((r / "split.json").read_text())["validation"]
                 != json.loads((tiny_segmentation_run.out_dir / "split.json").read_text())["validation"])
    with pytest.raises(SystemExit, match="other patients"):
        package([*runs, "--out", str(tmp_path / "b"), "--other-seeds", str(other)])
    assert not (tmp_path / "b").exists()  # refused before anything was written


def test_split_seed_keeps_the_validation_patients_while_the_training_seed_changes(tiny_classifier_run, tmp_path):
    from training.train import train_classifier

    def run(seed, split_seed, name):
        return train_classifier(tmp_path / name, samples=_toy_spines(10), input_size=64, epochs=1, batch_size=4,
                                dense=8, max_minutes=None, deterministic=False, verbose=0, evaluate=False,
                                seed=seed, split_seed=split_seed).out_dir

    def validation(out_dir):
        return json.loads((out_dir / "split.json").read_text())["validation"]

    base = validation(tiny_classifier_run.out_dir)  # seed 0
    assert validation(run(3, 0, "fixed")) == base
    assert any(validation(run(s, None, f"s{s}")) != base for s in (3, 4, 5))  # the split follows --seed otherwise


def test_package_ships_both_runs_with_descriptions_and_a_model_card(tiny_segmentation_run, tiny_classifier_run,
                                                                    tmp_path):
    from pipeline.inference import ModelInfo, sha256_of
    from training.package import main as package

    assert package([str(tiny_segmentation_run.out_dir), str(tiny_classifier_run.out_dir), "--out", str(tmp_path),
                    "--version", "9.9.9", "--date", "2026-11-25"]) == 0
    for name, run, classes in (("unet_4class", tiny_segmentation_run, 4), ("deteclordose", tiny_classifier_run, 3)):
        weights = tmp_path / f"{name}.weights.h5"
        assert weights.read_bytes() == run.weights_f16.read_bytes()  # the float16 copy, unchanged
        info = ModelInfo.read(weights)  # what the worker reads
        assert (info.name, info.version, info.input_size, len(info.classes)) == (name, "9.9.9", 64, classes)
        assert info.sha256 == sha256_of(weights)
    card = (tmp_path / "MODEL_CARD.md").read_text()
    assert "Not for clinical use without local validation" in card
    # what `lumbarnode evaluate` needs to re-measure the shipped weights on the same patients
    kept = tmp_path / "unet_4class.run"
    config = json.loads((kept / "config.json").read_text())
    assert (kept / config["result"]["weights_f16"]).resolve() == (tmp_path / "unet_4class.weights.h5").resolve()
    assert (kept / "split.json").read_bytes() == (tiny_segmentation_run.out_dir / "split.json").read_bytes()
    assert ModelInfo.read(tmp_path / "unet_4class.weights.h5").sha256 in card
    assert "synthetic only" in card and "2026-11-25" in card


def test_spiders_unlabelled_sacrum_is_not_taught_as_background(shared_data):
    """SPIDER's masks here never label the sacrum: below the lowest disc, in front of the
    canal, a background pixel may be vertebra (issue 20: taught as background, the network
    left real sacra unpainted, and no level was counted on 113 of 116 SPIDER slices)."""
    import cv2

    from training import datasets as ds

    mask = cv2.imread(str(shared_data / "spider-t2-slices" / "masks" / "136_65.png"), cv2.IMREAD_GRAYSCALE)
    marked = ds.sacrum_unknown_region(mask)
    region = marked == ds.MAYBE_VERTEBRA
    assert region.sum() > 2000
    assert np.array_equal(marked[~region], mask[~region]) and (mask[region] == ds.BACKGROUND).all()
    disc_rows = np.nonzero(mask == ds.DISC)[0]
    assert np.nonzero(region)[0].min() > np.percentile(disc_rows, 80)  # under the lowest disc
    canal_cols = np.nonzero(mask == ds.CANAL)[1]
    assert np.nonzero(region)[1].max() < canal_cols.max()  # in front of the canal
    bits = ds.allowed_bits(marked, ds.FOREGROUND)
    assert set(np.unique(bits[region])) == {1 | (1 << ds.VERTEBRA)}
    assert ds.sacrum_unknown_region(np.zeros((8, 8), np.uint8)).sum() == 0  # no disc, no canal: unchanged
