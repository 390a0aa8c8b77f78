"""Vertebral bodies and discs of one sagittal slice as connected components, and the rules that
tidy them before pipeline.identify counts the levels.

Coordinates: the canonical slice (rows superior -> inferior, columns anterior -> posterior) with
pixel spacing (row_mm, col_mm). Each rule answers a way the network's class map can mislead a
count of levels, seen on real validation images: bone away from the column, a piece beside a
body, a sliver inside a degenerated disc space, two bodies joined around a disc drawn only in
its middle.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.cobb import axis_tilt_deg, to_mm
from pipeline.labels import CANAL

MIN_BODY_AREA_MM2 = 80.0
OFF_COLUMN = 1.5  # a component this many body widths from the column's line is not a body
NEIGHBOURHOOD = 2.5  # typical body heights above and below that say where the column runs
MAX_SIDE_PIECE_AREA = 0.5  # a piece beside a body, at its height, smaller than this share of it
MAX_FRAGMENT_AREA = 0.35  # a piece in the column with less than this share of the usual body's area
MAX_FRAGMENT_HEIGHT = 0.65  # and of its height is a fragment, not a level
MIN_FUSED_HEIGHT = 1.4  # a body cut at a disc inside it is at least this many typical heights tall
MIN_FUSED_HEIGHT_AT_TOP = 1.15  # the same for a body cut by the top of the image
MIN_PART_HEIGHT = 0.5  # and each part, unless cut by the top of the image, at least this many
MIN_DISC_SHARE_OF_WIDTH = 0.4  # the disc it is cut at spans at least this share of its width
MIN_DOUBLE_HEIGHT = 1.8  # a body this many times the others' median height along the column is two


@dataclass(frozen=True)
class Component:
    mask: np.ndarray  # bool (rows, cols)
    centroid_px: tuple[float, float]  # (row, col)
    area_mm2: float
    height_mm: float  # superior-inferior extent

    @property
    def row(self) -> float:
        return self.centroid_px[0]

    @property
    def cut_by_top(self) -> bool:
        """The body reaches the top row of the image: partly out of view."""
        return bool(self.mask[0].any())


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


def component_of(mask: np.ndarray, spacing: tuple[float, float]) -> Component:
    rows, cols = np.nonzero(mask)
    return Component(mask=mask, centroid_px=(float(rows.mean()), float(cols.mean())),
                     area_mm2=float(len(rows) * spacing[0] * spacing[1]),
                     height_mm=float((rows.max() - rows.min() + 1) * spacing[0]))


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


def off_the_column(bodies: list[Component], spacing: tuple[float, float]
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


def beside_larger_bodies(bodies: list[Component]) -> tuple[list[Component], list[Component]]:
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


def without_fragments(bodies: list[Component]) -> tuple[list[Component], list[Component]]:
    """(bodies, fragments): a fragment is far smaller and shorter than the usual body and not cut
    by the top of the image: bone drawn inside a degenerated disc space (vacuum, sclerosis) would
    otherwise take a level."""
    if len(bodies) < 3:
        return bodies, []
    area = float(np.median([b.area_mm2 for b in bodies]))
    height = float(np.median([b.height_mm for b in bodies]))
    fragment = [b.area_mm2 < MAX_FRAGMENT_AREA * area and b.height_mm < MAX_FRAGMENT_HEIGHT * height
                and not b.cut_by_top for b in bodies]
    return ([b for b, f in zip(bodies, fragment) if not f], [b for b, f in zip(bodies, fragment) if f])


def cut_at_inner_discs(bodies: list[Component], discs: list[Component], spacing: tuple[float, float]
                        ) -> tuple[list[Component], list[tuple[Component, Component]]]:
    """Bodies cut along the discs that lie inside them; also the (upper, lower) pairs so cut.

    A disc drawn only in its middle leaves the bodies above and below it joined around its ends
    (at worst the whole column is one component). Cutting is reserved for a body tall enough to
    be two (MIN_FUSED_HEIGHT typical heights), at a disc spanning a good part of its width, into
    parts that each look like a body (or are cut by the top of the image), so that a bright spot
    inside one body (a basivertebral vein, a Schmorl node) never splits it. Parts are cut again
    while they hold another disc.
    """
    typical = _typical_height_mm(bodies, discs, spacing[0])
    if typical is None:
        return bodies, []
    out, cuts, todo = [], [], list(bodies)
    while todo:
        body = todo.pop()
        parts = None
        tall = MIN_FUSED_HEIGHT_AT_TOP if body.cut_by_top else MIN_FUSED_HEIGHT
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


def _typical_height_mm(bodies: list[Component], discs: list[Component], row_mm: float) -> float | None:
    """A body's usual height: the median over the bodies, or, when fewer than three were found
    apart, the median distance between neighbouring discs less their thickness."""
    if len(bodies) >= 3:
        return float(np.median([b.height_mm for b in bodies]))
    if len(discs) >= 3:
        pitch_mm = float(np.median(np.diff(sorted(d.row for d in discs)))) * row_mm
        return pitch_mm - float(np.median([d.height_mm for d in discs]))
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
    upper_part, lower_part = component_of(upper, spacing), component_of(lower, spacing)
    if lower_part.height_mm < MIN_PART_HEIGHT * typical_mm:
        return None
    if upper_part.height_mm < MIN_PART_HEIGHT * typical_mm and not upper_part.cut_by_top:
        return None
    return upper_part, lower_part


def as_tall_as_two(stack: list[Component], spacing: tuple[float, float]) -> list[int]:
    """Indices of the bodies in a stack (neighbours in order along the column) that are at least
    MIN_DOUBLE_HEIGHT times the median height of the others, heights measured along the column.

    A disc the network drew as bone (a degenerated, dark disc) joins two bodies into one that
    still sits between discs, so it takes one level and every level above it is off by one; L5
    joined to the top of the sacrum does the same to S1. Along the column, not along the rows:
    a tilted body's bounding box is far taller than the body (the lowest lumbar bodies and
    lateral slices of a curved spine reach 1.5 typical heights that way). Bodies cut by the top
    of the image are neither judged nor used as the measure.
    """
    heights = [_height_along_column_mm(stack, k, spacing) for k in range(len(stack))]
    whole = [k for k, body in enumerate(stack) if not body.cut_by_top]
    tall = []
    for k in whole:
        others = [heights[j] for j in whole if j != k]
        if len(others) >= 2 and heights[k] >= MIN_DOUBLE_HEIGHT * float(np.median(others)):
            tall.append(k)
    return tall


def _height_along_column_mm(stack: list[Component], k: int, spacing: tuple[float, float]) -> float:
    """Extent of body k along the line through its neighbours' centroids (one neighbour: the line
    to it), ignoring the outermost 1 % of pixels at each end (a spur of a pixel or two)."""
    (r0, c0), (r1, c1) = stack[max(k - 1, 0)].centroid_px, stack[min(k + 1, len(stack) - 1)].centroid_px
    axis = to_mm(np.array(r1 - r0), np.array(c1 - c0), spacing)
    if not axis.any():
        return stack[k].height_mm
    rows, cols = np.nonzero(stack[k].mask)
    along = to_mm(rows, cols, spacing) @ (axis / np.linalg.norm(axis))
    low, high = np.percentile(along, [1, 99])
    return float(high - low)


def _row_span(component: Component) -> tuple[int, int]:
    rows = np.nonzero(component.mask.any(axis=1))[0]
    return int(rows[0]), int(rows[-1])


def _width_mm(component: Component, spacing: tuple[float, float]) -> float:
    cols = np.nonzero(component.mask.any(axis=0))[0]
    return float((cols[-1] - cols[0] + 1) * spacing[1])
