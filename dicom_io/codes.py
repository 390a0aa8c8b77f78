"""The coded concepts of our SEG and SR: standard codes where DICOM has them, else ours.

Standard codes are taken from pydicom's code dictionary (DICOM PS3.16) where it holds them;
the one SNOMED CT code it lacks (intervertebral disc, 360499006) is the one DICOM's CID 7151
uses. S1 is coded as the sacrum (54735007): our S1 segment is every bone below the lowest
disc, the whole sacrum, and the sacrum is the code pydicom and viewers know.

Concepts no standard covers (the lordosis class as a finding, the quality flags, the
Deteclordose class) use the private coding scheme 99LUMBARNODE, documented here and in the
README and declared in each SR's Coding Scheme Identification Sequence.

How the results name the AI algorithm that made them (IHE RAD AI Results, AIR, Rev. 1.1,
6.5.3.1): each network is one item of the Contributing Equipment Sequence of the SEG, the SR
and the key image (`seg.algorithm_equipment`), identified by a UID derived from its weights
(`device_uid`), the same UID the SR gives as its Device Observer UID.
"""

from __future__ import annotations

import re
import uuid

from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

PRIVATE_SCHEME = "99LUMBARNODE"
PRIVATE_SCHEME_NAME = "lumbarnode concepts"
PRIVATE_SCHEME_ORGANISATION = "lumbarnode project"


def private(value: str, meaning: str) -> Code:
    return Code(value, PRIVATE_SCHEME, meaning)


# Segmented structures (SEG): category and property type of each label value's structure.
ANATOMICAL_STRUCTURE = codes.SCT.AnatomicalStructure
VERTEBRA = codes.SCT.Vertebra  # 51282000: vertebral bone whose level was not identified
LEVEL_CODES: dict[str, Code] = {
    "T11": codes.SCT.T11Vertebra,
    "T12": codes.SCT.T12Vertebra,
    "L1": codes.SCT.L1Vertebra,  # 66794005
    "L2": codes.SCT.L2Vertebra,  # 14293000
    "L3": codes.SCT.L3Vertebra,  # 36470004
    "L4": codes.SCT.L4Vertebra,  # 11994002
    "L5": codes.SCT.L5Vertebra,  # 49668003
    "L6": VERTEBRA,  # no code for a sixth lumbar vertebra; its label says "L6 (transitional)"
    "S1": codes.SCT.Sacrum,  # 54735007
}
INTERVERTEBRAL_DISC = Code("360499006", "SCT", "Intervertebral disc")
SPINAL_CANAL = codes.SCT.VertebralCanal  # 61853006
LUMBAR_SPINE = codes.SCT.LumbarSpine  # 122496007
ARTIFICIAL_INTELLIGENCE = codes.DCM.ArtificialIntelligence  # 123110, CID 7162

# Measurement report (SR)
# Procedure Reported: AIR asks for the imaging procedure analysed, not the algorithm. The method
# only runs on MR of the lumbar spine (the loader refuses other modalities), so it is LOINC's
# (RSNA/LOINC playbook) "MR Lumbar spine"; CID 100 is a baseline group and lists no
# body-region-specific MR procedure.
MR_LUMBAR_SPINE = Code("24968-0", "LN", "MR Lumbar spine")
COBB_ANGLE = codes.SCT.CobbAngle  # 285285000
DEGREE = Code("deg", "UCUM", "degree")
NO_UNITS = Code("1", "UCUM", "no units")
PROBABILITY = codes.DCM.Probability  # 122157
DEVICE = codes.DCM.Device
COBB_METHOD = private("COBB-L1S1-SUP", "Cobb L1-S1 superior endplates")
LORDOSIS_CLASS = private("LORDOSIS-CLASS", "Lumbar lordosis class")
CNN_LORDOSIS_CLASS = private("CNN-LORDOSIS", "Lumbar lordosis class by CNN (second opinion)")
QUALITY_FLAG = private("QUALITY-FLAG", "Quality flag")
LLA_SPREAD = private("LLA-SPREAD", "Range of the LLA across ensemble members")
# Purpose of Reference of our algorithms' Contributing Equipment items. AIR Rev. 1.1 6.5.3.1
# names a placeholder, (Newcode1, 99IHE, "Processing Algorithm"), that DICOM was to replace;
# CID 7005 (Contributing Equipment Purposes of Reference, as in pydicom 3.0's tables) holds no
# such code and highdicom refuses any code outside it. Of CID 7005's codes, 109102 "Processing Equipment" is defined as equipment that processed
# composite instances to create new ones, which is what the networks do (an MR series in, a
# new SEG, SR and key image out); 109103 "Modifying Equipment" is for equipment that changed
# existing instances without making new ones, which we never do.
PROCESSING_EQUIPMENT = codes.DCM.ProcessingEquipment  # 109102, CID 7005
COMMENT = codes.DCM.Comment  # 121106: the readable sentences OHIF lists with a measurement
IMAGE_REGION = codes.DCM.ImageRegion  # 111030
SOURCE_IMAGE = codes.DCM.SourceImage  # 121324
# How OHIF's tools name their measurement groups (@cornerstonejs/adapters): OHIF makes its own
# editable Cobb angle, or arrow with text, of a group whose tracking identifier starts so.
OHIF_COBB_ANGLE_TRACKING = "Cornerstone3DTools@^0.1.0:CobbAngle"
OHIF_ARROW_TRACKING = "Cornerstone3DTools@^0.1.0:ArrowAnnotate"

CLASS_CODES: dict[str, Code] = {
    "hypolordosis": private("HYPOLORDOSIS", "Hypolordosis"),
    "normal": private("NORMOLORDOSIS", "Normal lumbar lordosis"),
    "hyperlordosis": private("HYPERLORDOSIS", "Hyperlordosis"),
}
NORMALITY: dict[str, Code] = {  # CID 222
    "hypolordosis": codes.SCT.AbnormallyLow,
    "normal": codes.SCT.Normal,
    "hyperlordosis": codes.SCT.AbnormallyHigh,
}

# What each quality flag means (pipeline.analysis, pipeline.identify, the loader, the worker).
# A flag "name:detail" is coded by its whole text; its meaning is the description of `name`
# followed by the detail.
FLAG_MEANINGS: dict[str, str] = {
    "l1_not_found": "L1 not identified; LLA not measured",
    "s1_not_found": "S1 not identified; LLA not measured",
    "levels_unconfirmed": "Levels unconfirmed: S1 cut by the image edge, may be off",
    "no_vertebrae_found": "No vertebral body found",
    "no_discs_found": "No intervertebral disc found",
    "canal_not_found": "Spinal canal not found",
    "disc_not_found": "Disc missing between",
    "bodies_separated_at_disc": "Joined bodies separated at a partly seen disc",
    "possible_transitional_vertebra": "Possible transitional vertebra",
    "more_vertebrae_than_labelled": "More vertebrae than levels labelled",
    "possible_fused_bodies": "Body as tall as two; levels from it up may be one off",
    "l1_cut_by_field_of_view": "L1 cut by the edge of the image",
    "s1_cut_by_field_of_view": "S1 cut by the edge of the image",
    "l1_endplate_at_field_of_view_edge": "L1 endplate within 5 mm of the image edge",
    "anterior_on_the_right": "Anterior on the right; mirrored to measure",
    "implausible_angle": "Implausible angle",
    "ensemble_members_disagree": "The ensemble's networks disagree on the angle (wide spread): check it",
    "kyphotic_angle": "Negative L1-S1 angle (kyphosis): check the levels and the image orientation",
    "lla_differs_on_neighbouring_slices": "LLA differs on neighbouring slices",
    "measured_off_midline": "Measured on a slice off the midline",
    "endplate_fit_poor": "Poor endplate fit",
    "low_segmentation_confidence": "Low segmentation confidence",
    "cnn_disagrees_with_measurement": "CNN class differs from the measured class",
    "pixel_spacing_assumed_1mm": "Pixel spacing assumed 1 mm",
    "irregular_slice_spacing": "Irregular slice spacing",
    "incomplete_series": "Series received incomplete; measured on the slices received",
}
_MAX_MEANING = 64  # CodeMeaning is LO


def flag_meaning(flag: str) -> str:
    """One sentence for a quality flag, the same in the SR, the admin page and the demo."""
    name, _, detail = flag.partition(":")
    meaning = FLAG_MEANINGS.get(name, name.replace("_", " ").capitalize())
    return f"{meaning}: {detail.replace('_', ' ')}" if detail else meaning


def flag_code(flag: str) -> Code:
    """The coded value of one quality flag (private scheme; the code value is the flag itself)."""
    value = re.sub(r"[^A-Za-z0-9_:.\-]", "_", flag)
    return private(value, flag_meaning(flag)[:_MAX_MEANING])


# UUIDs of our algorithms are name-based (RFC 4122 version 5) in this namespace.
_WEIGHTS_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:lumbarnode:weights-sha256")


def device_uid(weights_sha256: str) -> str:
    """The Device UID of the network whose weights have this SHA-256: new weights, a new device.

    A 2.25 UID of a name-based UUID of the hash (PS3.5 B.2), the same at every site and in
    every job (never under the site's UID root: the same weights are the same algorithm
    wherever they run, so that results can be pooled by the algorithm that made them).
    """
    return f"2.25.{uuid.uuid5(_WEIGHTS_NAMESPACE, weights_sha256.strip().lower()).int}"


def coding_scheme_identification() -> Dataset:
    """An item of the Coding Scheme Identification Sequence that declares 99LUMBARNODE."""
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = PRIVATE_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = PRIVATE_SCHEME_ORGANISATION
    return item
