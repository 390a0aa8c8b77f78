"""Vertebra identification on one sagittal slice: separate the bodies, find S1, count up.

Input: a class map of one canonical slice (0 background, 1 vertebra, 2 disc, 3 canal; rows
superior -> inferior, columns anterior -> posterior) and its pixel spacing.

1. Vertebral bodies are the vertebra pixels anterior to the spinal canal (posterior elements
   lie behind it); each connected component is a body. Without a canal all vertebra pixels
   are used, and a flag says so. Bodies stack along the column: a component far in front of
   or behind its neighbours (bowel, a vessel wall), a small piece beside a larger body at its
   height (a pedicle where the canal was missed), or a sliver inside a disc space is not a level
   (pipeline.bodies holds these rules).
2. The intervertebral discs, in front of the canal (bright fluid behind it is a facet joint),
   separate the bodies. A body with a disc inside it (two bodies the network joined around a
   disc it drew only in its middle, as at T12-L1 at the top of the view) is cut along that
   disc, and a flag says where. The body directly below the lowest disc is S1 (the sacrum:
   every vertebra component below that disc belongs to it); the body directly above it is L5,
   and the count continues upward: L4..L1, T12, T11.
3. Nothing is silently relabelled: a missing S1 or L1, a missing disc between two bodies, an
   S1 that looks like a lumbar body (a transitional vertebra, sacralised L5 or lumbarised
   S1), or a body as tall as two (a disc drawn as bone: the levels from it upward may be one
   off) is a flag for the radiologist.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from pipeline.bodies import (
    MIN_BODY_AREA_MM2, Component, anterior_to_canal, as_tall_as_two, beside_larger_bodies, component_of, components,
    cut_at_inner_discs, off_the_column, without_fragments,
)
from pipeline.labels import (
    CANAL, CANAL_VALUE, DISC, DISC_VALUE, LEVEL_VALUES, LEVELS_ABOVE_S1, UNIDENTIFIED_VERTEBRA, VERTEBRA,
)

MIN_DISC_AREA_MM2 = 15.0
MIN_LOWEST_DISC_AREA = 0.3  # a disc below every body smaller than this share of the usual one is ignored


@dataclass
class Identification:
    bodies: dict[str, Component] = field(default_factory=dict)  # level -> body, superior to inferior
    unidentified: list[Component] = field(default_factory=list)
    discs: list[Component] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)

    def label_map(self, shape: tuple[int, int], class_map: np.ndarray | None = None) -> np.ndarray:
        """The `--mask-out` label map: level values, 19 unidentified, 30 disc, 40 canal."""
        out = np.zeros(shape, np.uint8)
        if class_map is not None:
            out[class_map == CANAL] = CANAL_VALUE
            out[class_map == DISC] = DISC_VALUE
            out[class_map == VERTEBRA] = UNIDENTIFIED_VERTEBRA  # posterior elements, unassigned pieces
        for component in self.unidentified:
            out[component.mask] = UNIDENTIFIED_VERTEBRA
        for level, component in self.bodies.items():
            out[component.mask] = LEVEL_VALUES[level]
        return out


def identify(class_map: np.ndarray, spacing: tuple[float, float]) -> Identification:
    result = Identification()
    vertebra = (class_map == VERTEBRA).astype(np.uint8)
    vertebra = cv2.morphologyEx(vertebra, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    in_front = anterior_to_canal(class_map)
    if in_front is None:
        result.flags.append("canal_not_found")
    else:
        vertebra &= in_front.astype(np.uint8)
    bodies = components(vertebra, spacing, MIN_BODY_AREA_MM2)
    bodies, off_column = off_the_column(bodies, spacing)
    bodies, beside = beside_larger_bodies(bodies)
    result.unidentified = off_column + beside
    result.discs = components(class_map == DISC, spacing, MIN_DISC_AREA_MM2)
    if in_front is not None:
        # Discs lie between the bodies, in front of the canal; bright fluid behind it is a facet joint.
        result.discs = [d for d in result.discs if in_front[int(round(d.row)), int(round(d.centroid_px[1]))]]
    bodies, cuts = cut_at_inner_discs(bodies, result.discs, spacing)
    if not bodies:
        result.flags += ["no_vertebrae_found", "s1_not_found", "l1_not_found"]
        return result
    if not result.discs:
        result.unidentified += bodies
        result.flags += ["no_discs_found", "s1_not_found", "l1_not_found"]
        return result

    lowest_disc = _lowest_disc(result.discs, bodies)
    below = [b for b in bodies if b.row > lowest_disc.row]
    above, fragments = without_fragments([b for b in bodies if b.row <= lowest_disc.row])
    result.unidentified += fragments
    if not below:
        result.unidentified += above
        result.flags += ["s1_not_found", "l1_not_found"]
        return result
    sacrum = _merge(below, spacing)
    result.bodies["S1"] = sacrum

    chain = list(reversed(above))  # inferior to superior, starting with L5
    for level, body in zip(LEVELS_ABOVE_S1, chain):
        result.bodies[level] = body
    result.unidentified += chain[len(LEVELS_ABOVE_S1):]
    if "L1" not in result.bodies:
        result.flags.append("l1_not_found")
    result.flags += _gap_flags(result, chain, sacrum)
    result.flags += _transitional_flags(result, chain, sacrum, lowest_disc)
    # A thoracic body joined to the one above it shifts no lumbar level: only L1..L5 are judged.
    tall = [LEVELS_ABOVE_S1[k] for k in as_tall_as_two(chain[:len(LEVELS_ABOVE_S1)], spacing)]
    result.flags += [f"possible_fused_bodies:{level}" for level in tall if level.startswith("L")]
    result.flags += [f"bodies_separated_at_disc:{_level_of(upper, result)}-{_level_of(lower, result)}"
                     for upper, lower in cuts]
    # Superior to inferior, as a radiologist reads.
    result.bodies = dict(sorted(result.bodies.items(), key=lambda kv: kv[1].row))
    return result


def _lowest_disc(discs: list[Component], bodies: list[Component]) -> Component:
    """The lowest disc, passing over small blobs below every body (at most a fragment of disc, in
    the pelvis): a full disc below every body means the sacrum is out of view, and nothing is
    labelled then."""
    usual = float(np.median([d.area_mm2 for d in discs]))
    for disc in reversed(discs):
        if any(b.row > disc.row for b in bodies) or disc.area_mm2 >= MIN_LOWEST_DISC_AREA * usual:
            return disc
    return discs[-1]


def _merge(parts: list[Component], spacing: tuple[float, float]) -> Component:
    """The sacrum: its fused segments, possibly split into several components, as one."""
    return component_of(np.logical_or.reduce([p.mask for p in parts]), spacing)


def _level_of(part: Component, result: Identification) -> str:
    """The level a part of a cut body was given (the sacrum may hold it), else 'unidentified'."""
    return next((level for level, body in result.bodies.items() if (body.mask & part.mask).any()), "unidentified")


def _gap_flags(result: Identification, chain: list[Component], sacrum: Component) -> list[str]:
    """A disc should lie between each pair of neighbouring bodies; say where none does."""
    flags = []
    levels = LEVELS_ABOVE_S1[: len(chain)]
    pairs = [("S1", sacrum, levels[0], chain[0])] if chain else []
    pairs += [(levels[i], chain[i], levels[i + 1], chain[i + 1]) for i in range(len(chain) - 1)
              if i + 1 < len(levels)]
    for lower_name, lower, upper_name, upper in pairs:
        if not any(upper.row < d.row < lower.row for d in result.discs):
            flags.append(f"disc_not_found:{upper_name}-{lower_name}")
    return flags


def _transitional_flags(result: Identification, chain: list[Component], sacrum: Component,
                        lowest_disc: Component) -> list[str]:
    """Signs of lumbosacral transitional anatomy; never acted upon, only reported."""
    flags = []
    lumbar = [b for b in chain[:5]]
    if lumbar:
        typical_height = float(np.median([b.height_mm for b in lumbar]))
        touches_bottom = sacrum.mask[-1].any()
        if sacrum.height_mm < 1.3 * typical_height and not touches_bottom:
            flags.append("possible_transitional_vertebra:s1_shaped_like_a_lumbar_body")
    if len(result.discs) >= 3:
        typical_disc = float(np.median([d.height_mm for d in result.discs[:-1]]))
        if lowest_disc.height_mm < 0.4 * typical_disc:
            flags.append("possible_transitional_vertebra:thin_lowest_disc")
    if len(chain) > len(LEVELS_ABOVE_S1):
        flags.append("more_vertebrae_than_labelled")
    return flags
