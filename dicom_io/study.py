"""The patient and study attributes that every object we write shares with its source series.

The SOP class constructors copy some of them and not others (highdicom's Secondary Capture
leaves out StudyDescription): a PACS or dcentvfy then sees one study described two ways.
"""

from __future__ import annotations

import copy

from pydicom.dataset import Dataset

PATIENT_AND_STUDY = (
    # Patient module
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    # General Study module
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
    "StudyDescription",
    # Patient Study module
    "PatientAge", "PatientSize", "PatientWeight",
)


def copy_study(source: Dataset, target: Dataset) -> None:
    """Give `target` the source's patient and study attributes, exactly as the source has them."""
    for keyword in PATIENT_AND_STUDY:
        if keyword in source:
            setattr(target, keyword, copy.deepcopy(source[keyword].value))
