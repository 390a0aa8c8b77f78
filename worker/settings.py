"""Every setting in one object, read from the environment (LUMBARNODE_*), with the
embedded defaults of the house plan."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Settings:
    model_dir: Path = REPOSITORY / "models"
    segmentation_model: str = "unet_4class"
    classifier_model: str = "deteclordose"
    lla_low_deg: float = 39.0  # below: hypolordosis
    lla_high_deg: float = 53.0  # at or above: hyperlordosis
    max_obliquity_deg: float = 30.0  # sagittal series may be this oblique
    uid_root: str = ""  # organisation UID root of the results; empty: 2.25 UIDs (no registration needed)
    key_image: bool = True  # also send a Secondary Capture of the measured slice with the result burned in
    institution_name: str = ""  # written into the results' equipment module when set

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            raw = environ.get(f"LUMBARNODE_{f.name.upper()}")
            if raw is not None:
                values[f.name] = _parse(raw, f.default, f"LUMBARNODE_{f.name.upper()}")
        return cls(**values)

    def weights(self, model: str) -> Path:
        return self.model_dir / f"{model}.weights.h5"


def _parse(raw: str, default: object, name: str) -> object:
    if isinstance(default, bool):
        if raw.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if raw.strip().lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name}={raw!r}: expected true or false")
    if isinstance(default, Path):
        return Path(raw)
    return type(default)(raw)
