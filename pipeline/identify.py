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
   disc, and a flag says where. The bone below the lowest disc (every vertebra component below
   it, as one) is S1 only when it is seen to be the sacrum; the body directly above it is then
   L5, and the count continues upward: L4..L1, T12, T11. Levels are never counted from a
   lowest body that the bottom of the image cuts like a lumbar body (issue 25: a view ending in
   L4 gave L2..S1): see _sacrum_evidence.
3. Nothing is silently relabelled: a missing S1 or L1, levels counted from a sacrum seen only
   at its top (cut by the bottom of the image), a missing disc between two bodies, an
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
from pipeline.cobb import axis_tilt_deg, fit_superior_endplate
from pipeline.labels import (
    CANAL, CANAL_VALUE, DISC, DISC_VALUE, LEVEL_VALUES, LEVELS_ABOVE_S1, UNIDENTIFIED_VERTEBRA, VERTEBRA,
)

MIN_DISC_AREA_MM2 = 15.0
MIN_LOWEST_DISC_AREA = 0.3  # a disc below every body smaller than this share of the usual one is ignored

# What makes the bone below the lowest disc the sacrum (_sacrum_evidence), measured on the shipped
# network's class maps of the 128 validation slices with per-level labels and 120 synthetic mid
# slices, each also cropped from below: through L2..L5 (at 30..100 % of the body) and just below
# them (2..8 px into the disc), and 10..40 mm below the top of S1.
MIN_SACRUM_CLEARANCE_MM = 5.0  # it ends this far above the image's lower edge: the column ends in view
MIN_SACRUM_HEIGHT = 1.35  # or it is this many typical body heights tall (cropped lumbar bodies: <= 1.24;
#                           uncropped synthetic sacra cut by the lower edge: >= 1.43)
MIN_TYPICAL_BODIES = 3  # whole bodies above it that give the typical height
# Cut by the lower edge and shorter (MyoSegmenTUM's view ends 20-40 mm into S1 on all 35 of its
# slices), only the tilt of its top tells it from a lumbar body: the sacral base faces forward.
# Real sacra: endplate 20.3..52.5 deg, disc above it 15.8..41 deg. Real crops that pass as well:
# none of 1350 at L2..L4, 55 of 450 at L5; synthetic: L2 0, L3 7, L4 55, L5 167 of 702 each.
# Tilt alone is no proof, so the levels are kept then but flagged `levels_unconfirmed`.
SACRAL_ENDPLATE_TILT_DEG = (20.0, 65.0)  # from square to the rows, positive toward anterior
MIN_SACRAL_DISC_TILT_DEG = 15.0


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
    chain = list(reversed(above))  # inferior to superior, starting with L5
    evidence = _sacrum_evidence(sacrum, chain, lowest_disc, result.discs, spacing)
    if evidence is None:
        # the lowest body in view is not seen to be the sacrum: counting from it would shift every level
        result.unidentified += above + below
        result.flags += ["s1_not_found", "l1_not_found"]
        return result
    if evidence == "unconfirmed":
        result.flags.append("levels_unconfirmed")
    result.bodies["S1"] = sacrum

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


def _sacrum_evidence(sacrum: Component, chain: list[Component], lowest_disc: Component,
                     discs: list[Component], spacing: tuple[float, float]) -> str | None:
    """'seen' when the bone below the lowest disc is seen to be the sacrum, 'unconfirmed' when
    only the tilt of its top says so, None when nothing does (it may be a lumbar body that the
    bottom of the image cuts).

    Seen: it ends inside the image, at least MIN_SACRUM_CLEARANCE_MM above the lower edge, with no
    disc below it (the column ends in view: a lumbar body would have its disc and the next body
    below), or it is taller than a lumbar body can be, MIN_SACRUM_HEIGHT times the median of the
    whole bodies above it. Cut by the lower edge and shorter than that, a lumbar body looks the
    same on a class map but for its tilt: a sacral base faces forward, its superior endplate
    tilted SACRAL_ENDPLATE_TILT_DEG from square to the rows, the disc above it at least
    MIN_SACRAL_DISC_TILT_DEG; that is likely but not proof (a hyperlordotic L5 tilts as much).
    """
    rows = np.nonzero(sacrum.mask.any(axis=1))[0]
    clearance_mm = (sacrum.mask.shape[0] - 1 - rows[-1]) * spacing[0]
    if clearance_mm >= MIN_SACRUM_CLEARANCE_MM and not any(d.row > rows[-1] for d in discs):
        return "seen"
    whole = [b.height_mm for b in chain[:5] if not b.cut_by_top]
    if len(whole) >= MIN_TYPICAL_BODIES and sacrum.height_mm >= MIN_SACRUM_HEIGHT * float(np.median(whole)):
        return "seen"
    disc_tilt = axis_tilt_deg(lowest_disc.mask, spacing)
    if disc_tilt is None or disc_tilt < MIN_SACRAL_DISC_TILT_DEG:
        return None
    endplate = fit_superior_endplate(sacrum.mask, spacing, expected_tilt_deg=disc_tilt)
    if endplate is None:
        return None
    dx, dy = endplate.direction_mm  # anterior -> posterior; posterior end higher: facing forward
    low, high = SACRAL_ENDPLATE_TILT_DEG
    return "unconfirmed" if low <= float(np.degrees(np.arctan2(dy, dx))) <= high else None


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
