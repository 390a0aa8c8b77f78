"""The rule class of a lumbar lordosis angle (METHOD.md section 4; Polly et al. 1996)."""

from __future__ import annotations

from dataclasses import dataclass

HYPOLORDOSIS, NORMAL, HYPERLORDOSIS = "hypolordosis", "normal", "hyperlordosis"


@dataclass(frozen=True)
class Thresholds:
    low_deg: float = 39.0  # below: hypolordosis
    high_deg: float = 53.0  # at or above: hyperlordosis

    def __post_init__(self) -> None:
        if not self.low_deg < self.high_deg:
            raise ValueError(f"thresholds must rise: {self.low_deg} < {self.high_deg}")


def classify_lla(lla_deg: float, thresholds: Thresholds = Thresholds()) -> str:
    """< low: hypolordosis; low <= x < high: normal; >= high: hyperlordosis."""
    if lla_deg < thresholds.low_deg:
        return HYPOLORDOSIS
    if lla_deg < thresholds.high_deg:
        return NORMAL
    return HYPERLORDOSIS
