"""Every subset of `../shared/data` (and two external formats) as 2-D training samples.

A `Sample` is one sagittal slice in the canonical layout (rows superior -> inferior, columns
anterior -> posterior) with a 4-class mask in the network's numbering (SEGMENTATION_CLASSES:
0 background, 1 vertebra, 2 disc, 3 canal).

Partial labels. Sources label different things, so each sample says what its mask means:
  * mask value 1, 2 or 3: that class, for sure;
  * mask value 0: none of the classes in `sample.known` (the classes this source labels
    completely); a class the source does not label may still be there;
  * mask value 254 (NOT_VERTEBRA): any class but vertebra (the disc space between two labelled
    bodies of the per-level volumes);
  * mask value 253 (MAYBE_VERTEBRA): background or vertebra (SPIDER's unlabelled sacrum);
  * mask value 255 (UNKNOWN): nothing is known about the pixel.
`allowed_bits` turns that into a per-pixel bit set of the classes still possible (bit c =
class c), which the training loss marginalises over, so unlabelled classes are never
penalised and never taught as background.

  source              known       notes
  spider-t2-slices    {1,2,3}     complete 4-class masks, but for the sacrum: this subset never
                                  labels it (1 of 127 slices checked); with spider_sacrum_unknown
                                  (`train --spider-sacrum-unknown`) background below the lowest
                                  disc and in front of the canal is MAYBE_VERTEBRA instead of
                                  being taught as background (issue 20; measured in the model
                                  card, not the shipped recipe)
  vesal-t2-slices     {2}         bodies (not posterior elements) as 1, discs 2, no canal: so a 0
                                  may be vertebra or canal; empty masks -> None (unlabelled)
  myosegmentum-vb3,   {1,2,3}     only vertebral BODIES are labelled (-> 1); posterior elements,
  chu2015-vb2                     sacrum, discs, canal are not, so everything is UNKNOWN except
                                  a strip anterior to the bodies (certainly background, 0) and
                                  the space between neighbouring bodies (NOT_VERTEBRA; its core
                                  is disc, 2)
  phantom             {1,2,3}     11,12,20-26,50 -> 1, 30 -> 2, 40 -> 3 (exact)
  fastmonai           -           no labels (mask None)
  false-colour        {1}         Otsu-binarised spine vs background, as in the paper
  SPIDER .mha         {1,2,3}     1..99 vertebrae -> 1, 100 canal -> 3, 201..299 discs -> 2

Patient ids are namespaced ("spider-t2-slices:107") so that splits are by patient and no id
can collide between sources. Every loader refuses data of the held-out patients listed in
MANIFEST.json (HeldOutError), and checks every file present, not only the ones it returns.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from dicom_io.volumes import load_real
from pipeline.networks import SEGMENTATION_CLASSES

SHARED_DATA_ENV = "LUMBARNODE_SHARED_DATA"


def shared_data_dir() -> Path:
    """`../shared/data` beside the checkout, or wherever LUMBARNODE_SHARED_DATA points."""
    if os.environ.get(SHARED_DATA_ENV):
        return Path(os.environ[SHARED_DATA_ENV])
    return Path(__file__).resolve().parents[2] / "shared" / "data"


N_CLASSES = len(SEGMENTATION_CLASSES)
BACKGROUND, VERTEBRA, DISC, CANAL = 0, 1, 2, 3
UNKNOWN = 255
NOT_VERTEBRA = 254
MAYBE_VERTEBRA = 253
ALL_BITS = (1 << N_CLASSES) - 1
FOREGROUND = frozenset({VERTEBRA, DISC, CANAL})

SPIDER = "spider-t2-slices"
VESAL = "vesal-t2-slices"
MYO = "myosegmentum-vb3"
CHU = "chu2015-vb2"
FASTMONAI = "fastmonai-t2-volume"
PHANTOM = "phantom"
SPIDER_MHA = "spider-mha"
FALSE_COLOUR = "false-colour"
# Vesal's patient identity is unknown (several slices may share a patient): one group, train only.
TRAIN_ONLY_SOURCES = (VESAL,)
# MANIFEST `held_out_ids` key prefix -> the sources whose ids it covers
_HELD_OUT_SCOPE = {SPIDER: (SPIDER, SPIDER_MHA), MYO: (MYO,), "fastcleverseg VB1": ("fastcleverseg-vb1",)}


class HeldOutError(RuntimeError):
    """Data of a held-out patient reached the developers' pipeline."""


@dataclass(frozen=True, eq=False)
class Sample:
    image: np.ndarray                 # (rows, cols), canonical layout, source intensities
    mask: np.ndarray | None           # (rows, cols) uint8 0..3 / 255, see module doc; None = unlabelled
    known: frozenset[int]             # classes a 0 in `mask` rules out
    spacing_mm: tuple[float, float] | None  # (row, col); None where the source lost it
    patient_id: str                   # "<source>:<id>"
    source: str
    item: str                         # file / slice, for provenance
    lla_deg: float | None = None      # exact reference L1-S1 LLA (phantom mid slices only)
    extra: dict = field(default_factory=dict)  # e.g. the phantom's per-level labels, for the LLA hook


# --------------------------------------------------------------------------------------------
# Partial labels
# --------------------------------------------------------------------------------------------
def allowed_bits(mask: np.ndarray | None, known: Iterable[int], shape: tuple[int, int] | None = None) -> np.ndarray:
    """Per-pixel bit set (uint8) of the classes still possible given a sample's mask."""
    if mask is None:
        if shape is None:
            raise ValueError("an unlabelled sample needs a shape")
        return np.full(shape, ALL_BITS, np.uint8)
    bits = np.full(mask.shape, ALL_BITS, np.uint8)
    unknown_classes = FOREGROUND - frozenset(known)
    bits[mask == BACKGROUND] = 1 | sum(1 << c for c in unknown_classes)
    for c in FOREGROUND:
        bits[mask == c] = 1 << c
    bits[mask == NOT_VERTEBRA] = ALL_BITS & ~(1 << VERTEBRA)
    bits[mask == MAYBE_VERTEBRA] = 1 | (1 << VERTEBRA)
    return bits


def sacrum_unknown_region(mask: np.ndarray) -> np.ndarray:
    """A complete mask whose sacrum was left as background: background below the lowest disc
    (column by column, under its lowest pixel; beyond its ends, under its lowest row), in front
    of the canal and not far in front of the disc, becomes MAYBE_VERTEBRA. Masks without a disc or canal are returned as they are."""
    discs = (mask == DISC).astype(np.uint8)
    count, components, stats, centroids = cv2.connectedComponentsWithStats(discs)
    big = [i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] >= 50]
    canal_rows, canal_cols = np.nonzero(mask == CANAL)
    if not big or not len(canal_rows):
        return mask
    lowest = components == max(big, key=lambda i: centroids[i][1])
    rows, cols = np.nonzero(lowest)
    floor = np.full(mask.shape[1], rows.max(), int)  # below this row, per column, lies the sacrum
    for col in np.unique(cols):
        floor[col] = rows[cols == col].max()
    front = np.full(mask.shape[0], int(np.median(canal_cols)), int)  # the canal's anterior edge per row
    for row in np.unique(canal_rows):
        front[row] = canal_cols[canal_rows == row].min()
    # the sacrum lies under the disc, not in the pelvis in front of it: within a quarter of the
    # disc's width in front of its anterior end, and within 1.5 widths under it
    width = cols.max() - cols.min() + 1
    r, c = np.indices(mask.shape)
    region = ((r > floor[None, :]) & (r <= rows.max() + 1.5 * width) & (c >= cols.min() - width / 4)
              & (c < front[:, None]) & (mask == BACKGROUND))
    out = mask.copy()
    out[region] = MAYBE_VERTEBRA
    return out


def bits_to_multihot(bits: np.ndarray) -> np.ndarray:
    """(..., ) bit sets -> (..., N_CLASSES) float32 0/1: 1 where the class is allowed."""
    return ((bits[..., None] >> np.arange(N_CLASSES, dtype=np.uint8)) & 1).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Held-out ids
# --------------------------------------------------------------------------------------------
@lru_cache(maxsize=8)
def _held_out_cached(manifest_path: str, mtime: float) -> dict[str, frozenset[str]]:
    manifest = json.loads(Path(manifest_path).read_text())
    out: dict[str, set[str]] = {}
    for key, ids in manifest.get("held_out_ids", {}).items():
        ids = list(ids.keys()) if isinstance(ids, dict) else list(ids)  # dict = duplicate copies: keys never used
        scope = next((s for prefix, s in _HELD_OUT_SCOPE.items() if key.startswith(prefix)), (key.split(" ")[0],))
        for source in scope:
            out.setdefault(source, set()).update(str(i) for i in ids)
    return {k: frozenset(v) for k, v in out.items()}


def held_out_ids(data_dir: str | Path | None = None) -> dict[str, frozenset[str]]:
    """source -> ids that must never be loaded. Refuses to guess when MANIFEST.json is absent."""
    path = Path(data_dir or shared_data_dir()) / "MANIFEST.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the held-out list is needed before any data is loaded")
    return _held_out_cached(str(path), path.stat().st_mtime)


def _refuse_held_out(source: str, ids: Iterable[str], held_out: dict[str, frozenset[str]], where: str) -> None:
    bad = sorted(set(ids) & held_out.get(source, frozenset()))
    if bad:
        raise HeldOutError(f"{where}: held-out {source} ids {bad} are present; they must never be used "
                           f"for development (MANIFEST.json held_out_ids). Remove them from the folder.")


def check_no_held_out(samples: Iterable[Sample], held_out: dict[str, frozenset[str]]) -> None:
    """Raise HeldOutError if any sample belongs to a held-out patient."""
    for s in samples:
        _refuse_held_out(s.source, [s.patient_id.split(":", 1)[1]], held_out, s.item)


def check_folder(data_dir: str | Path | None = None) -> None:
    """Scan every subset for held-out ids (file names), whatever a run would load."""
    data_dir = Path(data_dir or shared_data_dir())
    held = held_out_ids(data_dir)
    for sub in (SPIDER, VESAL):
        if (data_dir / sub / "images").is_dir():
            _refuse_held_out(sub, (p.stem.split("_")[0] for p in (data_dir / sub / "images").glob("*.png")),
                             held, str(data_dir / sub))
    for sub in (MYO, CHU):
        if (data_dir / sub).is_dir():
            _refuse_held_out(sub, (p.stem for p in (data_dir / sub).glob("*.npz")), held, str(data_dir / sub))


# --------------------------------------------------------------------------------------------
# Loaders for ../shared/data
# --------------------------------------------------------------------------------------------
_SPIDER_NAME = re.compile(r"^(\d+)_(\d+)$")


def load_spider(data_dir: str | Path | None = None, patients: Iterable[str] | None = None,
                max_slices_per_patient: int | None = None, sacrum_unknown: bool = False) -> list[Sample]:
    """SPIDER T2 SPACE slices: complete 4-class masks; pixel spacing lost (None)."""
    data_dir = Path(data_dir or shared_data_dir())
    held = held_out_ids(data_dir)
    files: dict[str, list[tuple[int, Path]]] = {}
    for path in (data_dir / SPIDER / "images").glob("*.png"):
        m = _SPIDER_NAME.match(path.stem)
        if not m:
            raise ValueError(f"{path.name}: unexpected SPIDER file name")
        files.setdefault(m.group(1), []).append((int(m.group(2)), path))
    _refuse_held_out(SPIDER, files, held, str(data_dir / SPIDER))
    wanted = sorted(files, key=int) if patients is None else [str(p) for p in patients]
    samples = []
    for pid in wanted:
        slices = sorted(files[pid])
        if max_slices_per_patient is not None and len(slices) > max_slices_per_patient:
            keep = np.linspace(0, len(slices) - 1, max_slices_per_patient).round().astype(int)
            slices = [slices[i] for i in keep]  # evenly spread, the central ones included
        for _, path in slices:
            vol = load_real(path)
            if vol.labels is None:
                raise ValueError(f"{path.name}: mask missing")
            mask = vol.labels[0].astype(np.uint8)
            mask = sacrum_unknown_region(mask) if sacrum_unknown else mask
            samples.append(Sample(vol.image[0], mask, FOREGROUND, None,
                                  f"{SPIDER}:{pid}", SPIDER, f"{SPIDER}/{path.name}"))
    return samples


def load_vesal(data_dir: str | Path | None = None) -> list[Sample]:
    """Vesal's 20 slices: bodies and discs labelled, posterior elements and canal not; empty masks
    are unlabelled (None)."""
    data_dir = Path(data_dir or shared_data_dir())
    held_out_ids(data_dir)  # refuse to run without the manifest, like every loader
    samples = []
    for path in sorted((data_dir / VESAL / "images").glob("*.png")):
        vol = load_real(path)
        mask = None if vol.labels is None else vol.labels[0].astype(np.uint8)
        if mask is not None and not mask.any():
            mask = None  # the source's "empty" masks are one all-zero blob: not labelled, not "no spine"
        # Only discs are complete: "vertebra" marks bodies (posterior elements, which are class 1 in
        # SPIDER and the phantom, are left as background; discs-only masks omit the bodies too) and
        # the canal is not labelled, so a background pixel may still be vertebra or canal.
        samples.append(Sample(vol.image[0], mask, frozenset({DISC}), None, f"{VESAL}:unknown", VESAL,
                              f"{VESAL}/{path.name}"))
    return samples


def _mid_slices(labels: np.ndarray, count: int) -> list[int]:
    """The slice with the largest labelled area and its neighbours (count odd: centred)."""
    area = (labels > 0).reshape(len(labels), -1).sum(axis=1)
    centre = int(np.argmax(area))
    idx = [centre + k for k in range(-(count // 2), count - count // 2)]
    return [i for i in idx if 0 <= i < len(labels) and area[i] > 0]


def bodies_to_partial_mask(labels: np.ndarray, col_spacing_mm: float, anterior_margin_mm: float | None = 8.0
                           ) -> np.ndarray:
    """Per-level BODY labels -> partial 4-class mask: bodies 1, UNKNOWN elsewhere, except a strip
    further than `anterior_margin_mm` anterior to the bodies, which is certainly background (0),
    and the space between two neighbouring levels, which is certainly not vertebra (NOT_VERTEBRA).
    Why: the posterior elements and sacrum are bone (class 1 elsewhere) but unlabelled here, so
    'not labelled' must not be taught as background; the prevertebral side is safe to call so.
    Without the disc spaces a network learns to paint the whole column as bone on these images
    (the first shipped candidate did: no discs, so no vertebra could be identified)."""
    bodies = labels > 0
    mask = np.full(labels.shape, UNKNOWN, np.uint8)
    if anterior_margin_mm is not None and bodies.any():
        rows = np.flatnonzero(bodies.any(axis=1))
        first_col = np.full(labels.shape[0], np.inf)
        first_col[rows] = bodies[rows].argmax(axis=1)
        # disc spaces between bodies have no body pixels: take the most anterior body within +-10 rows
        band = np.array([first_col[max(0, r - 10): r + 11].min() for r in range(labels.shape[0])])
        margin = anterior_margin_mm / col_spacing_mm
        for r in range(rows[0], rows[-1] + 1):
            if np.isfinite(band[r]):
                mask[r, : max(0, int(band[r] - margin))] = BACKGROUND
    spaces = disc_spaces(labels) & (mask == UNKNOWN)
    mask[spaces] = NOT_VERTEBRA
    # The core of a disc space (2 mm in from its edges, which the bodies' concave waists and the
    # anterior and posterior rims reach) is disc: exact, so the network learns discs on these
    # contrasts too, and identification (which needs the discs) works on them.
    core = cv2.erode(spaces.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    mask[core] = DISC
    mask[bodies] = VERTEBRA
    return mask


_LEVEL_ORDER = (11, 12, 20, 21, 22, 23, 24, 25, 26)  # T11 .. S1 in the shared data's numbering


def disc_spaces(labels: np.ndarray) -> np.ndarray:
    """Pixels between two anatomically adjacent labelled bodies: the convex hull of the pair,
    minus both bodies grown by one pixel (their labelled edge may sit a pixel inside the bone)."""
    present = [v for v in _LEVEL_ORDER if (labels == v).any()]
    out = np.zeros(labels.shape, bool)
    grown = cv2.dilate((labels > 0).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    for upper, lower in zip(present, present[1:]):
        if _LEVEL_ORDER.index(lower) - _LEVEL_ORDER.index(upper) != 1:
            continue  # a level missing in between: its space is not a disc
        rows, cols = np.nonzero((labels == upper) | (labels == lower))
        hull = cv2.convexHull(np.stack([cols, rows], axis=1).astype(np.int32))
        region = np.zeros(labels.shape, np.uint8)
        cv2.fillConvexPoly(region, hull, 1)
        out |= region.astype(bool)
    return out & ~grown


def load_per_level(subset: str, data_dir: str | Path | None = None, ids: Iterable[str] | None = None,
                   slices_per_volume: int = 1, anterior_margin_mm: float | None = 8.0) -> list[Sample]:
    """myosegmentum-vb3 / chu2015-vb2 volumes -> their mid-sagittal slice(s), bodies only."""
    if subset not in (MYO, CHU):
        raise ValueError(f"not a per-level subset: {subset}")
    data_dir = Path(data_dir or shared_data_dir())
    held = held_out_ids(data_dir)
    paths = {p.stem: p for p in sorted((data_dir / subset).glob("*.npz"))}
    _refuse_held_out(subset, paths, held, str(data_dir / subset))
    samples = []
    for vid in (sorted(paths) if ids is None else [str(i) for i in ids]):
        vol = load_real(paths[vid])
        spacing = (vol.spacing_mm[1], vol.spacing_mm[2])
        for k in _mid_slices(vol.labels, slices_per_volume):
            mask = bodies_to_partial_mask(vol.labels[k], spacing[1], anterior_margin_mm)
            samples.append(Sample(vol.image[k], mask, FOREGROUND, spacing, f"{subset}:{vid}", subset,
                                  f"{subset}/{vid}.npz[{k}]", extra={"level_labels": vol.labels[k]}))
    return samples


def load_fastmonai(data_dir: str | Path | None = None) -> list[Sample]:
    """The fastMONAI NIfTI: 16 real-geometry slices, no labels."""
    data_dir = Path(data_dir or shared_data_dir())
    held_out_ids(data_dir)
    vol = load_real(data_dir / FASTMONAI / "img.nii.gz")
    spacing = (vol.spacing_mm[1], vol.spacing_mm[2])
    return [Sample(vol.image[k], None, frozenset(), spacing, f"{FASTMONAI}:img", FASTMONAI,
                   f"{FASTMONAI}/img.nii.gz[{k}]") for k in range(len(vol.image))]


# --------------------------------------------------------------------------------------------
# Synthetic phantoms (cached: ~0.3 s per slice to make)
# --------------------------------------------------------------------------------------------
PHANTOM_TO_CLASS = np.zeros(256, np.uint8)
for _v in (11, 12, 20, 21, 22, 23, 24, 25, 26, 50):
    PHANTOM_TO_CLASS[_v] = VERTEBRA
PHANTOM_TO_CLASS[30] = DISC
PHANTOM_TO_CLASS[40] = CANAL


def default_cache_dir() -> Path:
    return Path(os.environ.get("LUMBARNODE_CACHE", Path.home() / ".cache" / "lumbarnode"))


def _phantom_cached(params, cache_dir: Path | None) -> dict:
    """make_phantom through an .npz cache keyed by the parameters and the phantom code itself."""
    import dataclasses

    from pipeline.synthetic import phantom as ph

    code = hashlib.sha256(Path(ph.__file__).read_bytes()).hexdigest()[:12]
    key = hashlib.sha256((json.dumps(dataclasses.asdict(params), sort_keys=True) + code).encode()).hexdigest()[:20]
    path = None if cache_dir is None else Path(cache_dir) / "phantoms" / f"{key}.npz"
    if path is not None and path.is_file():
        with np.load(path) as d:
            return {k: d[k] for k in d.files}
    p = ph.make_phantom(params)
    data = {"image": p.image, "labels": p.labels, "lla_deg": np.float64(p.lla_deg), "mid_slice": np.int64(p.mid_slice)}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")  # unique: runs may share the cache
        np.savez_compressed(tmp, **data)
        tmp.replace(path)
    return data


def phantom_params(index: int, seed: int, slices: int, lla_range: tuple[float, float]):
    """Deterministic parameters of phantom `index`: LLA uniform in lla_range, T2 / T1 alternating."""
    from pipeline.synthetic.phantom import PhantomParams

    rng = np.random.default_rng([seed, index])
    return PhantomParams(lla_deg=float(rng.uniform(*lla_range)), seed=seed * 100_000 + index, slices=slices,
                         contrast=("t2", "t1")[index % 2])


def load_phantoms(count: int, seed: int = 1, slices: int = 3, lla_range: tuple[float, float] = (0.0, 80.0),
                  mid_only: bool = False, cache_dir: Path | None | str = "default",
                  progress: bool = False) -> list[Sample]:
    """`count` synthetic volumes -> their slices (or mid slices) with exact labels and LLA."""
    cache = default_cache_dir() if cache_dir == "default" else (None if cache_dir is None else Path(cache_dir))
    samples = []
    for i in range(count):
        params = phantom_params(i, seed, slices, lla_range)
        d = _phantom_cached(params, cache)
        mid = int(d["mid_slice"])
        pid = f"{PHANTOM}:{params.seed}"
        for k in ([mid] if mid_only else range(len(d["image"]))):
            samples.append(Sample(
                d["image"][k], PHANTOM_TO_CLASS[d["labels"][k]], FOREGROUND,
                (params.row_spacing_mm, params.col_spacing_mm), pid, PHANTOM,
                f"{PHANTOM}/seed{params.seed}-{params.contrast}[{k}]",
                lla_deg=float(d["lla_deg"]) if k == mid else None,
                extra={"level_labels": d["labels"][k], "contrast": params.contrast}))
        if progress and (i + 1) % 25 == 0:
            print(f"  phantoms {i + 1}/{count}", flush=True)
    return samples


# --------------------------------------------------------------------------------------------
# The paper's false-colour label images (Otsu) and SPIDER .mha volumes
# --------------------------------------------------------------------------------------------
def otsu_threshold(grey: np.ndarray) -> float:
    """Otsu's global threshold on a 256-bin histogram of an 8-bit-scale image."""
    hist = np.bincount(np.clip(np.asarray(grey), 0, 255).astype(np.uint8).ravel(), minlength=256).astype(np.float64)
    p = hist / hist.sum()
    omega = np.cumsum(p)
    mu = np.cumsum(p * np.arange(256))
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * omega - mu) ** 2 / (omega * (1.0 - omega))
    between[~np.isfinite(between)] = -1.0
    return float(np.argmax(between))  # pixels > threshold are foreground


def false_colour_to_binary(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """A false-colour label image (RGB, uint8) -> (binary mask 0/1, Otsu threshold), as the paper
    does (section 3.3.1): grey conversion, one global Otsu threshold, grey > threshold = spine."""
    rgb = np.asarray(rgb)
    grey = cv2.cvtColor(rgb.astype(np.uint8), cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb.astype(np.uint8)
    th = otsu_threshold(grey)
    return (grey > th).astype(np.uint8), th


def load_false_colour(images: Sequence[str | Path], label_images: Sequence[str | Path],
                      patient_ids: Sequence[str] | None = None) -> list[Sample]:
    """Paper-style pairs (MR slice, false-colour label image) -> binary spine samples (known {1})."""
    if len(images) != len(label_images):
        raise ValueError("images and label images differ in number")
    samples = []
    for i, (ip, lp) in enumerate(zip(images, label_images)):
        image = cv2.imread(str(ip), cv2.IMREAD_GRAYSCALE)
        colour = cv2.imread(str(lp), cv2.IMREAD_COLOR)
        if image is None or colour is None:
            raise ValueError(f"unreadable: {ip} / {lp}")
        mask, _ = false_colour_to_binary(cv2.cvtColor(colour, cv2.COLOR_BGR2RGB))
        pid = patient_ids[i] if patient_ids else Path(ip).stem
        samples.append(Sample(image, mask, frozenset({VERTEBRA}), None, f"{FALSE_COLOUR}:{pid}", FALSE_COLOUR,
                              str(ip)))
    return samples


_MET_TYPES = {"MET_UCHAR": np.uint8, "MET_CHAR": np.int8, "MET_USHORT": np.uint16, "MET_SHORT": np.int16,
              "MET_UINT": np.uint32, "MET_INT": np.int32, "MET_FLOAT": np.float32, "MET_DOUBLE": np.float64}


def read_mha(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A tiny MetaImage (.mha/.mhd) reader: -> (array indexed [k, j, i], spacing (i, j, k) mm,
    direction 3x3 whose ROWS are the LPS directions of axes i, j, k). Raw or zlib data."""
    path = Path(path)
    raw = path.read_bytes()
    header: dict[str, str] = {}
    pos = 0
    while True:
        end = raw.index(b"\n", pos)
        key, _, value = raw[pos:end].decode("ascii").partition("=")
        header[key.strip()] = value.strip()
        pos = end + 1
        if key.strip() == "ElementDataFile":
            break
    dims = [int(v) for v in header["DimSize"].split()]
    dtype = np.dtype(_MET_TYPES[header["ElementType"]])
    dtype = dtype.newbyteorder(">" if header.get("BinaryDataByteOrderMSB", header.get("ElementByteOrderMSB", "False"))
                               == "True" else "<")
    data = raw[pos:] if header["ElementDataFile"] == "LOCAL" else (path.parent / header["ElementDataFile"]).read_bytes()
    if header.get("CompressedData", "False") == "True":
        data = zlib.decompress(data)
    n = int(np.prod(dims))
    array = np.frombuffer(data, dtype, count=n).reshape(dims[::-1]).astype(dtype.newbyteorder("="))
    spacing = np.array([float(v) for v in header.get("ElementSpacing", " ".join(["1"] * len(dims))).split()])
    matrix = header.get("TransformMatrix", header.get("Orientation", header.get("Rotation")))
    direction = np.eye(len(dims)) if matrix is None else np.array([float(v) for v in matrix.split()]).reshape(len(dims), -1)
    return array, spacing, direction


def mha_to_canonical(array: np.ndarray, spacing: np.ndarray, direction: np.ndarray
                     ) -> tuple[np.ndarray, tuple[float, float, float]]:
    """[k, j, i] MetaImage array -> (slices toward patient left, rows inferior, cols posterior)."""
    # LPS axes: +x left, +y posterior, +z superior. Canonical wants +L, -z (inferior), +P.
    targets = [(0, 1.0), (2, -1.0), (1, 1.0)]  # (LPS axis, wanted sign) for slice, row, col
    axis_dirs = direction[::-1]  # numpy axis a <-> MetaImage axis (k, j, i)[a]
    spac = spacing[::-1]
    order, flips = [], []
    for lps, sign in targets:
        a = int(np.argmax(np.abs(axis_dirs[:, lps])))
        order.append(a)
        flips.append(np.sign(axis_dirs[a, lps]) != sign)
    if sorted(order) != [0, 1, 2]:
        raise ValueError("oblique .mha orientation: cannot map onto the canonical sagittal layout")
    out = np.transpose(array, order)
    for ax, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis=ax)
    return np.ascontiguousarray(out), tuple(float(spac[a]) for a in order)


def spider_mask_to_classes(mask: np.ndarray) -> np.ndarray:
    """SPIDER label values (1..99 vertebrae, 100 canal, 201..299 discs) -> 0..3."""
    out = np.zeros(mask.shape, np.uint8)
    out[(mask >= 1) & (mask < 100)] = VERTEBRA
    out[mask == 100] = CANAL
    out[(mask > 200) & (mask < 300)] = DISC
    return out


def load_spider_mha(image_path: str | Path, mask_path: str | Path | None = None,
                    held_out: dict[str, frozenset[str]] | None = None, labelled_only: bool = True) -> list[Sample]:
    """One SPIDER volume (e.g. images/12_t2.mha, masks/12_t2.mha) -> its sagittal slices.
    The patient id is the number before '_' and is checked against SPIDER's held-out ids."""
    image_path = Path(image_path)
    pid = image_path.name.split("_")[0].split(".")[0]
    if held_out is None:
        held_out = held_out_ids() if (shared_data_dir() / "MANIFEST.json").is_file() else {}
    _refuse_held_out(SPIDER_MHA, [pid], held_out, str(image_path))
    image, spacing = mha_to_canonical(*read_mha(image_path))
    labels = None
    if mask_path is not None:
        labels, _ = mha_to_canonical(*read_mha(mask_path))
        labels = spider_mask_to_classes(labels)
    samples = []
    for k in range(len(image)):
        mask = None if labels is None else labels[k]
        if labelled_only and mask is not None and not mask.any():
            continue
        samples.append(Sample(image[k], mask, FOREGROUND if mask is not None else frozenset(),
                              (spacing[1], spacing[2]), f"{SPIDER_MHA}:{pid}", SPIDER_MHA, f"{image_path.name}[{k}]"))
    return samples


# --------------------------------------------------------------------------------------------
# Training sets and patient-level splits
# --------------------------------------------------------------------------------------------
DEFAULT_SEGMENTATION_SOURCES = (SPIDER, VESAL, PHANTOM, MYO, CHU)


def segmentation_samples(sources: Sequence[str] = DEFAULT_SEGMENTATION_SOURCES, data_dir: str | None = None,
                         phantom_count: int = 24, phantom_slices: int = 3, phantom_seed: int = 1,
                         phantom_lla_range: tuple[float, float] = (0.0, 80.0), per_level_slices: int = 1,
                         spider_max_slices_per_patient: int | None = None, cache_dir: str | None = "default",
                         progress: bool = False, spider_sacrum_unknown: bool = False) -> list[Sample]:
    """All labelled segmentation samples of the chosen sources (JSON-serialisable arguments, so
    that an evaluation can rebuild exactly the same set from a run's config.json)."""
    samples: list[Sample] = []
    for source in sources:
        if source == SPIDER:
            samples += load_spider(data_dir, max_slices_per_patient=spider_max_slices_per_patient,
                                   sacrum_unknown=spider_sacrum_unknown)
        elif source == VESAL:
            samples += load_vesal(data_dir)
        elif source in (MYO, CHU):
            samples += load_per_level(source, data_dir, slices_per_volume=per_level_slices)
        elif source == PHANTOM:
            samples += load_phantoms(phantom_count, phantom_seed, phantom_slices, tuple(phantom_lla_range),
                                     cache_dir=cache_dir, progress=progress)
        else:
            raise ValueError(f"unknown segmentation source {source!r}")
        if progress:
            print(f"  loaded {source}: {sum(s.source == source for s in samples)} slices", flush=True)
    if any(s.source != PHANTOM for s in samples):
        check_no_held_out(samples, held_out_ids(data_dir))
    return [s for s in samples if s.mask is not None]


def classifier_samples(count: int = 300, seed: int = 2, lla_range: tuple[float, float] = (15.0, 77.0),
                       cache_dir: str | None = "default", progress: bool = False) -> list[Sample]:
    """Phantom mid slices with exact LLA: the only data with a trustworthy L1-S1 angle."""
    return load_phantoms(count, seed, slices=1, lla_range=tuple(lla_range), mid_only=True,
                         cache_dir=cache_dir, progress=progress)


def _source_of(patient_id: str) -> str:
    return patient_id.split(":", 1)[0]


def split_patients(patient_ids: Iterable[str], val_fraction: float = 0.2, seed: int = 0,
                   train_only_sources: Sequence[str] = TRAIN_ONLY_SOURCES) -> dict[str, list[str]]:
    """Patient-level split, per source (each source gives ~val_fraction of its patients to
    validation), deterministic in the seed and independent of the input order."""
    by_source: dict[str, list[str]] = {}
    for pid in sorted(set(patient_ids)):
        by_source.setdefault(_source_of(pid), []).append(pid)
    train, val = [], []
    for source, ids in sorted(by_source.items()):
        if source in train_only_sources or len(ids) < 2:
            train += ids
            continue
        rng = np.random.default_rng([seed, zlib.crc32(source.encode())])
        order = rng.permutation(len(ids))
        n_val = min(len(ids) - 1, max(1, int(round(val_fraction * len(ids)))))
        val += [ids[i] for i in order[:n_val]]
        train += [ids[i] for i in order[n_val:]]
    assert not set(train) & set(val), "a patient in both splits"
    return {"train": sorted(train), "validation": sorted(val)}


def apply_split(samples: Sequence[Sample], split: dict[str, list[str]]) -> tuple[list[Sample], list[Sample]]:
    train_ids, val_ids = set(split["train"]), set(split["validation"])
    if train_ids & val_ids:
        raise AssertionError(f"patients in both splits: {sorted(train_ids & val_ids)}")
    return [s for s in samples if s.patient_id in train_ids], [s for s in samples if s.patient_id in val_ids]
