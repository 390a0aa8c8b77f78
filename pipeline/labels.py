"""Label values: the network's classes and the per-level values of results and masks.

Per-level values follow ../shared/data (Tn -> n, Ln -> 19 + n, S1/sacrum 26) and the
`analyze --mask-out` contract.
"""

from __future__ import annotations

# Network classes (pipeline.networks.SEGMENTATION_CLASSES)
BACKGROUND, VERTEBRA, DISC, CANAL = 0, 1, 2, 3

LEVEL_VALUES: dict[str, int] = {
    "T11": 11, "T12": 12, "L1": 20, "L2": 21, "L3": 22, "L4": 23, "L5": 24, "L6": 25, "S1": 26,
}
UNIDENTIFIED_VERTEBRA = 19
DISC_VALUE = 30
CANAL_VALUE = 40

# Counting upward from S1, in a spine with five lumbar vertebrae.
LEVELS_ABOVE_S1 = ("L5", "L4", "L3", "L2", "L1", "T12", "T11")
