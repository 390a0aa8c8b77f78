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
    """None when the method can use the series; else why not, as a short code."""
    sop_class = str(header.get("SOPClassUID", ""))
    if sop_class not in MR_IMAGE_CLASSES:
        return "not_an_mr_image"
    if str(header.get("Modality", "")) != "MR":
        return "not_mr"
    iop = orientation(header)
    if iop is None or len(iop) != 6:
        return "no_orientation"
    normal = unit(np.cross(iop[:3], iop[3:]))
    plane = plane_name(normal)
    if plane != "sagittal":
        return f"not_sagittal:{plane}"
    if angle_to_axis_deg(normal, 0) > rules.max_obliquity_deg:
        return "too_oblique"
    body_part = str(header.get("BodyPartExamined", "")).strip().upper()
    descriptions = " ".join(str(header.get(k, "")) for k in ("SeriesDescription", "StudyDescription",
                                                              "ProtocolName"))
    if body_part not in rules.body_parts and not re.search(rules.description_pattern, descriptions):
        return f"not_lumbar:{body_part.lower() or 'no_body_part'}"
    if slices < 2:
        return "single_slice"
    return None
