"""Vertebra identification on one sagittal slice: separate the bodies, find S1, count up.

Input: a class map of one canonical slice (0 background, 1 vertebra, 2 disc, 3 canal; rows
superior -> inferior, columns anterior -> posterior) and its pixel spacing.

1. Vertebral bodies are the vertebra pixels anterior to the spinal canal (posterior elements
   lie behind it); each connected component is a body. Without a canal all vertebra pixels
   are used, and a flag says so. Bodies stack along the column: a component far in front of
   or behind its neighbours (bowel, a vessel wall), a small piece beside a larger body at its
   height (a pedicle where the canal was missed), or a sliver inside a disc space is not a level.
2. The intervertebral discs, in front of the canal (bright fluid behind it is a facet joint),
   separate the bodies. A body with a disc inside it (two bodies the network joined around a
   disc it drew only in its middle, as at T12-L1 at the top of the view) is cut along that
   disc, and a flag says where. The body directly below the lowest disc is S1 (the sacrum:
   every vertebra component below that disc belongs to it); the body directly above it is L5,
   and the count continues upward: L4..L1, T12, T11.
3. Nothing is silently relabelled: a missing S1 or L1, a missing disc between two bodies, or
   an S1 that looks like a lumbar body (a transitional vertebra, sacralised L5 or lumbarised
   S1) is a flag for the radiologist.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from pipeline.cobb import axis_tilt_deg, to_mm
from pipeline.labels import (
    CANAL, CANAL_VALUE, DISC, DISC_VALUE, LEVEL_VALUES, LEVELS_ABOVE_S1, UNIDENTIFIED_VERTEBRA, VERTEBRA,
)

MIN_BODY_AREA_MM2 = 80.0
MIN_DISC_AREA_MM2 = 15.0
OFF_COLUMN = 1.5  # a component this many body widths from the column's line is not a body
NEIGHBOURHOOD = 2.5  # typical body heights above and below that say where the column runs
MAX_SIDE_PIECE_AREA = 0.5  # a piece beside a body, at its height, smaller than this share of it
MIN_FUSED_HEIGHT = 1.4  # a body cut at a disc inside it is at least this many typical heights tall
MIN_FUSED_HEIGHT_AT_TOP = 1.15  # the same for a body cut by the top of the image
MIN_PART_HEIGHT = 0.5  # and each part, unless cut by the top of the image, at least this many
MIN_DISC_SHARE_OF_WIDTH = 0.4  # the disc it is cut at spans at least this share of its width
MAX_FRAGMENT_AREA = 0.35  # a piece in the column with less than this share of the usual body's area
MAX_FRAGMENT_HEIGHT = 0.65  # and of its height is a fragment, not a level
MIN_LOWEST_DISC_AREA = 0.3  # a disc below every body smaller than this share of the usual one is ignored


@dataclass(frozen=True)
class Component:
    mask: np.ndarray  # bool (rows, cols)
    centroid_px: tuple[float, float]  # (row, col)
    area_mm2: float
    height_mm: float  # superior-inferior extent

    @property
    def row(self) -> float:
        return self.centroid_px[0]


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


def components(mask: np.ndarray, spacing: tuple[float, float], min_area_mm2: float) -> list[Component]:
    """Connected components larger than min_area_mm2, ordered superior to inferior."""
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
    pixel_mm2 = spacing[0] * spacing[1]
    found = []
    for i in range(1, count):
        area = stats[i, cv2.CC_STAT_AREA] * pixel_mm2
        if area < min_area_mm2:
            continue
        found.append(Component(
            mask=labels == i,
            centroid_px=(float(centroids[i][1]), float(centroids[i][0])),
            area_mm2=float(area),
            height_mm=float(stats[i, cv2.CC_STAT_HEIGHT] * spacing[0]),
        ))
    return sorted(found, key=lambda c: c.row)


def anterior_to_canal(class_map: np.ndarray) -> np.ndarray | None:
    """Pixels in front of the canal's anterior wall (row by row), or None without a canal.

    Rows the canal does not reach take the wall position of the nearest canal rows
    (linear interpolation, constant beyond the ends).
    """
    canal = class_map == CANAL
    rows = np.nonzero(canal.any(axis=1))[0]
    if len(rows) < 5:
        return None
    front = np.array([np.nonzero(canal[r])[0].min() for r in rows], float)
    wall = np.interp(np.arange(class_map.shape[0]), rows, front)
    return np.arange(class_map.shape[1])[None, :] < wall[:, None]


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
    bodies, off_column = _off_the_column(bodies, spacing)
    bodies, beside = _beside_larger_bodies(bodies)
    result.unidentified = off_column + beside
    result.discs = components(class_map == DISC, spacing, MIN_DISC_AREA_MM2)
    if in_front is not None:
        # Discs lie between the bodies, in front of the canal; bright fluid behind it is a facet joint.
        result.discs = [d for d in result.discs if in_front[int(round(d.row)), int(round(d.centroid_px[1]))]]
    bodies, cuts = _cut_at_inner_discs(bodies, result.discs, spacing)
    if not bodies:
        result.flags += ["no_vertebrae_found", "s1_not_found", "l1_not_found"]
        return result
    if not result.discs:
        result.unidentified += bodies
        result.flags += ["no_discs_found", "s1_not_found", "l1_not_found"]
        return result

    lowest_disc = _lowest_disc(result.discs, bodies)
    below = [b for b in bodies if b.row > lowest_disc.row]
    above, fragments = _without_fragments([b for b in bodies if b.row <= lowest_disc.row])
    result.unidentified += fragments
    if not below:
        result.unidentified += bodies
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
    result.flags += [f"bodies_separated_at_disc:{_level_of(upper, result)}-{_level_of(lower, result)}"
                     for upper, lower in cuts]
    # Superior to inferior, as a radiologist reads.
    result.bodies = dict(sorted(result.bodies.items(), key=lambda kv: kv[1].row))
    return result


def _without_fragments(bodies: list[Component]) -> tuple[list[Component], list[Component]]:
    """(bodies, fragments): a fragment is far smaller and shorter than the usual body and not cut
    by the top of the image: bone drawn inside a degenerated disc space (vacuum, sclerosis) would
    otherwise take a level."""
    if len(bodies) < 3:
        return bodies, []
    area = float(np.median([b.area_mm2 for b in bodies]))
    height = float(np.median([b.height_mm for b in bodies]))
    fragment = [b.area_mm2 < MAX_FRAGMENT_AREA * area and b.height_mm < MAX_FRAGMENT_HEIGHT * height
                and not b.mask[0].any() for b in bodies]
    return ([b for b, f in zip(bodies, fragment) if not f], [b for b, f in zip(bodies, fragment) if f])


def _lowest_disc(discs: list[Component], bodies: list[Component]) -> Component:
    """The lowest disc, passing over small blobs below every body (at most a fragment of disc, in
    the pelvis): a full disc below every body means the sacrum is out of view, and nothing is
    labelled then."""
    usual = float(np.median([d.area_mm2 for d in discs]))
    for disc in reversed(discs):
        if any(b.row > disc.row for b in bodies) or disc.area_mm2 >= MIN_LOWEST_DISC_AREA * usual:
            return disc
    return discs[-1]


def _component(mask: np.ndarray, spacing: tuple[float, float]) -> Component:
    rows, cols = np.nonzero(mask)
    return Component(mask=mask, centroid_px=(float(rows.mean()), float(cols.mean())),
                     area_mm2=float(len(rows) * spacing[0] * spacing[1]),
                     height_mm=float((rows.max() - rows.min() + 1) * spacing[0]))


def _row_span(component: Component) -> tuple[int, int]:
    rows = np.nonzero(component.mask.any(axis=1))[0]
    return int(rows[0]), int(rows[-1])


def _width_mm(component: Component, spacing: tuple[float, float]) -> float:
    cols = np.nonzero(component.mask.any(axis=0))[0]
    return float((cols[-1] - cols[0] + 1) * spacing[1])


def _off_the_column(bodies: list[Component], spacing: tuple[float, float]
                    ) -> tuple[list[Component], list[Component]]:
    """(bodies, strays): a stray lies more than OFF_COLUMN body widths in front of or behind the
    median of its neighbours (the components within NEIGHBOURHOOD typical heights above and below).

    Something the network took for bone away from the spine (a bowel loop, a vessel wall) would
    otherwise take a level and shift every level above it.
    """
    if len(bodies) < 4:
        return bodies, []
    width = float(np.median([_width_mm(b, spacing) for b in bodies]))
    reach = NEIGHBOURHOOD * float(np.median([b.height_mm for b in bodies])) / spacing[0]
    kept, strays = [], []
    for body in bodies:
        near = [o.centroid_px[1] for o in bodies if o is not body and abs(o.row - body.row) <= reach]
        off = len(near) >= 2 and abs(body.centroid_px[1] - float(np.median(near))) * spacing[1] > OFF_COLUMN * width
        (strays if off else kept).append(body)
    return kept, strays


def _beside_larger_bodies(bodies: list[Component]) -> tuple[list[Component], list[Component]]:
    """(bodies, pieces): a piece lies mostly within the rows of a body more than twice its area.

    Vertebral bodies stack; two components side by side at one height are a body and something
    else (posterior elements in front of a canal the network missed): counting both would shift
    every level above them by one.
    """
    kept, pieces = [], []
    for body in bodies:
        top, bottom = _row_span(body)
        beside = False
        for other in bodies:
            if other is body or body.area_mm2 >= MAX_SIDE_PIECE_AREA * other.area_mm2:
                continue
            o_top, o_bottom = _row_span(other)
            shared = min(bottom, o_bottom) - max(top, o_top) + 1
            beside = beside or shared > 0.5 * (bottom - top + 1)
        (pieces if beside else kept).append(body)
    return kept, pieces


def _cut_at_inner_discs(bodies: list[Component], discs: list[Component], spacing: tuple[float, float]
                        ) -> tuple[list[Component], list[tuple[Component, Component]]]:
    """Bodies cut along the discs that lie inside them; also the (upper, lower) pairs so cut.

    A disc drawn only in its middle leaves the bodies above and below it joined around its ends
    (at worst the whole column is one component). Cutting is reserved for a body tall enough to
    be two (MIN_FUSED_HEIGHT typical heights), at a disc spanning a good part of its width, into
    parts that each look like a body (or are cut by the top of the image), so that a bright spot
    inside one body (a basivertebral vein, a Schmorl node) never splits it. Parts are cut again
    while they hold another disc.
    """
    typical = _typical_height_mm(bodies, discs)
    if typical is None:
        return bodies, []
    out, cuts, todo = [], [], list(bodies)
    while todo:
        body = todo.pop()
        parts = None
        tall = MIN_FUSED_HEIGHT_AT_TOP if body.mask[0].any() else MIN_FUSED_HEIGHT  # the top: partly out of view
        if body.height_mm >= tall * typical:
            for disc in sorted(discs, key=lambda d: -d.area_mm2):
                parts = _cut_along(body, disc, spacing, typical)
                if parts:
                    break
        if parts:
            todo += parts
            cuts.append(parts)
        else:
            out.append(body)
    # a part cut again: the pair is the pieces on either side of this cut
    cuts = [(_piece_of(upper, out, lowest=True), _piece_of(lower, out, lowest=False)) for upper, lower in cuts]
    return sorted(out, key=lambda c: c.row), sorted(cuts, key=lambda pair: pair[0].row)


def _typical_height_mm(bodies: list[Component], discs: list[Component]) -> float | None:
    """A body's usual height: the median over the bodies, or, when fewer than three were found
    apart, the median spacing of the discs less their thickness."""
    if len(bodies) >= 3:
        return float(np.median([b.height_mm for b in bodies]))
    if len(discs) >= 3:
        rows = np.array([d.row for d in discs])
        spacing_px = float(np.median(np.diff(np.sort(rows))))
        pixel_mm = bodies[0].height_mm / (np.ptp(np.nonzero(bodies[0].mask.any(axis=1))[0]) + 1) if bodies else 0.0
        return spacing_px * pixel_mm - float(np.median([d.height_mm for d in discs]))
    return None


def _piece_of(part: Component, final: list[Component], lowest: bool) -> Component:
    """The lowest (or highest) of the final bodies a part ended in."""
    pieces = [b for b in final if (b.mask & part.mask).any()]
    return max(pieces, key=lambda b: b.row if lowest else -b.row)


def _cut_along(body: Component, disc: Component, spacing: tuple[float, float], typical_mm: float
               ) -> tuple[Component, Component] | None:
    """(upper, lower) parts of a body above and below a disc inside it, or None when the disc is
    not inside the body or a part would not be a body.

    The disc's long axis gives the direction of the cut; the body pixels beside the disc, between
    its upper and lower supporting lines, are disc the network took for bone and belong to
    neither part, so that each part ends at the disc's surface (its endplate) and not in the
    middle of the disc.
    """
    rows, cols = np.nonzero(body.mask)
    d_rows, d_cols = np.nonzero(disc.mask)
    r = int(round(disc.row))
    at_height = cols[np.abs(rows - r) <= 2]
    if not rows.min() < r < rows.max() or len(at_height) == 0:
        return None
    body_width = at_height.max() - at_height.min() + 1
    if not (at_height.min() <= disc.centroid_px[1] <= at_height.max()
            and d_cols.max() - d_cols.min() + 1 >= MIN_DISC_SHARE_OF_WIDTH * body_width):
        return None
    tilt = np.radians(axis_tilt_deg(disc.mask, spacing) or 0.0)
    normal = np.array([-np.sin(tilt), np.cos(tilt)])  # mm (x posterior, y superior), toward superior
    heights = to_mm(rows, cols, spacing) @ normal
    disc_heights = to_mm(d_rows, d_cols, spacing) @ normal
    upper, lower = np.zeros_like(body.mask), np.zeros_like(body.mask)
    above, below = heights > disc_heights.max(), heights < disc_heights.min()
    upper[rows[above], cols[above]] = True
    lower[rows[below], cols[below]] = True
    pixel_mm2 = spacing[0] * spacing[1]
    if min(upper.sum(), lower.sum()) * pixel_mm2 < MIN_BODY_AREA_MM2:
        return None
    upper_part, lower_part = _component(upper, spacing), _component(lower, spacing)
    if lower_part.height_mm < MIN_PART_HEIGHT * typical_mm:
        return None
    if upper_part.height_mm < MIN_PART_HEIGHT * typical_mm and not upper[0].any():
        return None
    return upper_part, lower_part


def _merge(parts: list[Component], spacing: tuple[float, float]) -> Component:
    """The sacrum: its fused segments, possibly split into several components, as one."""
    return _component(np.logical_or.reduce([p.mask for p in parts]), spacing)


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
