"""Running the networks: loaded once, called many times, batched over a series.

A model is a Keras weights file with a small JSON beside it (`<name>.json`: name, version,
architecture, input size, classes). The caller passes paths; nothing here knows where the
shipped models live. TensorFlow is imported when a model is loaded, not on import, so that
code that only measures does not pay for it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.preprocess import SEGMENTATION_INPUT, classifier_input, from_network, to_network


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    sha256: str  # of the weights file
    architecture: str
    input_size: int
    classes: tuple[str, ...]

    @classmethod
    def read(cls, weights: Path) -> ModelInfo:
        meta_path = weights.with_name(weights.name.removesuffix(".weights.h5") + ".json")
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path.name} (model description) is missing beside {weights.name}")
        meta = json.loads(meta_path.read_text())
        return cls(name=meta["name"], version=meta["version"], sha256=sha256_of(weights),
                   architecture=meta["architecture"], input_size=int(meta["input_size"]),
                   classes=tuple(meta["classes"]))

    def as_dict(self) -> dict:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _compiled(model, input_size: int):
    """The model as one traced graph: eager calls cost tens of ms each on a CPU."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, input_size, input_size, 1], tf.float32)])
    def forward(x):
        return model(x, training=False)

    return forward


class Segmenter:
    """The U-Net: slices in, class probabilities on each slice's own pixel grid out."""

    def __init__(self, weights: str | Path, batch_size: int = 8):
        from pipeline.networks import build_unet

        weights = Path(weights)
        self.info = ModelInfo.read(weights)
        size = self.info.input_size or SEGMENTATION_INPUT
        self._model = build_unet(classes=len(self.info.classes), input_size=size)
        self._model.load_weights(weights)
        self._forward = _compiled(self._model, size)
        self._size = size
        self.batch_size = batch_size

    def probabilities(self, slices: np.ndarray) -> np.ndarray:
        """(n, rows, cols) -> (n, rows, cols, classes) float32."""
        slices = np.asarray(slices)
        if slices.ndim == 2:
            slices = slices[None]
        x = to_network(slices, self._size)
        out = np.concatenate([self._forward(x[i:i + self.batch_size]).numpy()
                              for i in range(0, len(x), self.batch_size)])
        if out.shape[-1] == 1:  # the binary variant: background vs vertebra
            out = np.concatenate([1 - out, out], axis=-1)
        return from_network(out, slices.shape[1:])


class Mirrored:
    """A member run on the slices mirrored anterior <-> posterior, its output mirrored back."""

    def __init__(self, segmenter: Segmenter):
        self.segmenter = segmenter
        self.info = segmenter.info

    def probabilities(self, slices: np.ndarray) -> np.ndarray:
        slices = np.asarray(slices)
        return self.segmenter.probabilities(slices[..., ::-1])[:, :, ::-1]


def _members_at_once(members: Sequence[Segmenter | Mirrored], input_size: int):
    """Every member, mirrored ones on the input mirrored in the graph, as one traced call:
    (n, size, size, 1) -> (members, n, size, size, classes). One call per batch instead of one
    per member, the input prepared once (mirroring commutes with the per-slice normalisation
    and the symmetric resizes of pipeline.preprocess)."""
    import tensorflow as tf

    networks = [(m.segmenter if isinstance(m, Mirrored) else m)._model for m in members]
    mirrored = [isinstance(m, Mirrored) for m in members]

    @tf.function(input_signature=[tf.TensorSpec([None, input_size, input_size, 1], tf.float32)])
    def forward(x):
        flipped = tf.reverse(x, axis=[2]) if any(mirrored) else None
        outputs = [tf.reverse(network(flipped, training=False), axis=[2]) if mirror else network(x, training=False)
                   for network, mirror in zip(networks, mirrored)]
        return tf.stack(outputs)

    return forward


class Ensemble:
    """U-Nets of one recipe trained from different seeds (issue 20): their class probabilities
    averaged, and each member's kept, so that the angle each one measures gives its spread.
    One member behaves exactly as that member's Segmenter. The members (and their mirrors)
    run as one traced call per batch (bench/ensemble.py measures it against one call each)."""

    def __init__(self, members: Sequence[Segmenter | Mirrored], batch_size: int = 8):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = tuple(members)
        self.batch_size = batch_size
        sizes = {m.info.input_size or SEGMENTATION_INPUT for m in self.members}
        if len(sizes) > 1:
            raise ValueError(f"ensemble members differ in input size ({sorted(sizes)}): one recipe only")
        self._size = sizes.pop()
        self._forward = None  # traced at the first call
        first = self.members[0].info
        if len(self.members) == 1:
            self.info = first
        else:
            # named by all its weights: other members make other results (and other result UIDs)
            combined = hashlib.sha256("".join(m.info.sha256 + ("~" if isinstance(m, Mirrored) else "")
                                              for m in self.members).encode()).hexdigest()
            one_network = len({m.info.sha256 for m in self.members}) == 1  # itself and its mirrored pass
            name = f"{first.name} with mirrored pass" if one_network else f"{first.name} ensemble of {len(self.members)}"
            self.info = ModelInfo(name=name, version=first.version,
                                  sha256=combined, architecture=first.architecture, input_size=first.input_size,
                                  classes=first.classes)

    @classmethod
    def load(cls, weights: Sequence[str | Path]) -> Ensemble:
        """One member per weights file; a path ending in ":flip" is a member already loaded,
        run on the mirrored slices (test-time augmentation)."""
        loaded: dict[str, Segmenter] = {}
        members: list[Segmenter | Mirrored] = []
        for item in map(str, weights):
            path, _, option = item.partition(":flip")
            segmenter = loaded.get(path) or loaded.setdefault(path, Segmenter(path))
            members.append(Mirrored(segmenter) if item.endswith(":flip") and not option else segmenter)
        return cls(members)

    def member_probabilities(self, slices: np.ndarray) -> list[np.ndarray]:
        """Each member's (n, rows, cols, classes) probabilities."""
        slices = np.asarray(slices)
        if slices.ndim == 2:
            slices = slices[None]
        if self._forward is None:
            self._forward = _members_at_once(self.members, self._size)
        x = to_network(slices, self._size)
        out = np.concatenate([self._forward(x[i:i + self.batch_size]).numpy()
                              for i in range(0, len(x), self.batch_size)], axis=1)
        if out.shape[-1] == 1:  # the binary variant: background vs vertebra
            out = np.concatenate([1 - out, out], axis=-1)
        return [from_network(member, slices.shape[1:]) for member in out]

    def members_one_by_one(self, slices: np.ndarray) -> list[np.ndarray]:
        """The same, one call per member: what the batched call is compared with."""
        return [member.probabilities(slices) for member in self.members]

    def probabilities(self, slices: np.ndarray) -> np.ndarray:
        return np.mean(self.member_probabilities(slices), axis=0)


class LordosisClassifier:
    """Deteclordose: one slice in, a probability per lordosis class out."""

    def __init__(self, weights: str | Path):
        from pipeline.networks import build_deteclordose

        weights = Path(weights)
        self.info = ModelInfo.read(weights)
        self._model = build_deteclordose(input_size=self.info.input_size)
        self._model.load_weights(weights)
        self._forward = _compiled(self._model, self.info.input_size)

    def probabilities(self, image: np.ndarray) -> dict[str, float]:
        p = self._forward(classifier_input(image, self.info.input_size)).numpy()[0]
        return {name: float(v) for name, v in zip(self.info.classes, p)}
