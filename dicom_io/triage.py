"""Which received series the method can use, decided from headers alone (no pixels).

A series is queued when it is an MR image series, sagittal (within the obliquity limit),
of the lumbar spine (BodyPartExamined in a list, or the series or study description
matching a pattern; both configurable), with more than one slice. Anything else becomes a
job row with status `skipped` and the reason code returned here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from dicom_io.geometry import angle_to_axis_deg, plane_name, unit
from dicom_io.reasons import Reason
from dicom_io.scp import MR_IMAGE_CLASSES


@dataclass(frozen=True)
class SeriesRules:
    body_parts: frozenset[str] = frozenset({"LSPINE", "LUMBAR", "LSSPINE", "SPINE"})
    description_pattern: str = r"(?i)lumb|l-?spine"
    max_obliquity_deg: float = 30.0

    @classmethod
    def from_text(cls, body_parts: str, description_pattern: str, max_obliquity_deg: float) -> SeriesRules:
        parts = frozenset(p.strip().upper() for p in body_parts.split(",") if p.strip())
        re.compile(description_pattern)
        return cls(parts, description_pattern, max_obliquity_deg)


def orientation(header: Dataset) -> list[float] | None:
    """ImageOrientationPatient of a single-frame image, or of an enhanced image's frames."""
    if "ImageOrientationPatient" in header:
        return [float(v) for v in header.ImageOrientationPatient]
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        items = header.get(groups) or []
        if items and "PlaneOrientationSequence" in items[0]:
            plane = items[0].PlaneOrientationSequence[0]
            if "ImageOrientationPatient" in plane:
                return [float(v) for v in plane.ImageOrientationPatient]
    return None


def frame_count(header: Dataset) -> int:
    return int(header.get("NumberOfFrames", 1) or 1)


def triage(header: Dataset, slices: int, rules: SeriesRules = SeriesRules()) -> str | None:
    """None when the method can use the series; else why not, as a code of dicom_io/reasons.py."""
    sop_class = str(header.get("SOPClassUID", ""))
    if sop_class not in MR_IMAGE_CLASSES:
        return Reason.NOT_AN_MR_IMAGE.coded()
    if str(header.get("Modality", "")) != "MR":
        return Reason.NOT_MR.coded()
    iop = orientation(header)
    if iop is None or len(iop) != 6:
        return Reason.NO_ORIENTATION.coded()
    normal = unit(np.cross(iop[:3], iop[3:]))
    plane = plane_name(normal)
    if plane != "sagittal":
        return Reason.NOT_SAGITTAL.coded(plane)
    if angle_to_axis_deg(normal, 0) > rules.max_obliquity_deg:
        return Reason.TOO_OBLIQUE.coded()
    body_part = str(header.get("BodyPartExamined", "")).strip().upper()
    descriptions = " ".join(str(header.get(k, "")) for k in ("SeriesDescription", "StudyDescription",
                                                              "ProtocolName"))
    if body_part not in rules.body_parts and not re.search(rules.description_pattern, descriptions):
        return Reason.NOT_LUMBAR.coded(body_part.lower() or "no_body_part")
    if slices < 2:
        return Reason.SINGLE_SLICE.coded()
    return None


def missing_instances(headers: list[Dataset]) -> str | None:
    """Why a series looks incomplete from its headers alone, or None.

    - Instance numbers skipped: a step between sorted numbers wider than the series' own
      step (a series numbered 2, 4, 6 is complete; 1, 2, 4 is not).
    - A step between slice positions at least 1.6 times the usual one (a missing slice
      doubles it; the loader's `irregular_slice_spacing` flags smaller differences).

    A series cut at its end shows neither: that is what the association's end tells.
    """
    images = [h for h in headers if str(h.get("SOPClassUID", "")) in MR_IMAGE_CLASSES and frame_count(h) == 1]
    numbers = sorted({int(h.InstanceNumber) for h in images if str(h.get("InstanceNumber", "")).strip().isdigit()})
    if len(numbers) >= 3:
        steps = np.diff(numbers)
        usual = int(steps.min())
        skipped = [n + usual * k for n, step in zip(numbers, steps) for k in range(1, step // usual) if step > usual]
        if skipped:
            shown = ", ".join(map(str, skipped[:5])) + (", ..." if len(skipped) > 5 else "")
            return f"instance numbers {shown} missing (between {numbers[0]} and {numbers[-1]})"
    iop = orientation(images[0]) if images else None
    if iop is not None and len(iop) == 6 and len(images) >= 3:
        normal = unit(np.cross(iop[:3], iop[3:]))
        positions = sorted(float(np.dot(normal, [float(v) for v in h.ImagePositionPatient]))
                           for h in images if "ImagePositionPatient" in h)
        steps = np.diff(positions)
        steps = steps[steps > 1e-3]  # repeats at one position are the loader's to refuse
        if len(steps) >= 2 and steps.max() >= 1.6 * float(np.median(steps)):
            return f"a gap of {steps.max():.1f} mm between slices {float(np.median(steps)):.1f} mm apart"
    return None
