"""The DICOM Segmentation of a series: one segment per structure found.

Input: the loaded Series and a label volume in its canonical layout with the values of
pipeline.labels (levels, 19 unidentified vertebra, 30 disc, 40 canal). The labels are put
back onto the source pixels (undoing the loader's transpose/flips) frame by frame, so each
SEG frame lies exactly on its source frame; highdicom copies the plane positions from the
source images, so nothing is mirrored or shifted on sagittal or non-square-pixel series.

Levels counted from an S1 the method could not confirm (quality flag `levels_unconfirmed`,
pipeline.identify) are labelled so: "L5 (unconfirmed)", with a segment description saying why;
levels it withheld (`s1_not_found`) are no level segment at all, only "Vertebra, level not
identified".

Choices that viewers need: every source frame is written for every segment, empty or not
(omitting empty frames has shifted segments in OHIF), and ReferencedSeriesSequence names the
source series (highdicom writes it; OHIF needs it).

The AI algorithm (IHE AIR): each segment is AUTOMATIC with the network's Segmentation
Algorithm Identification (family artificial intelligence, name, version, weights SHA-256), and
the network is an item of the Contributing Equipment Sequence (`algorithm_equipment`, which the
SR and the key image use too).
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from dicom_io import codes
from dicom_io.results import Algorithm, Producer
from dicom_io.series import Series
from dicom_io.study import copy_study
from dicom_io.uids import ResultUIDs

SEG_SERIES_DESCRIPTION = "Lumbar spine segmentation (lumbarnode)"
UNCONFIRMED = "unconfirmed"
UNCONFIRMED_DESCRIPTION = ("Level counted upward from an S1 seen only where the image edge cuts it; "
                           "not confirmed as the sacrum, the levels may be off")

# label value -> (segment label, property type, display colour RGB); segment order follows this.
# Neighbouring levels get colours of different hue and lightness (Trubetskoy's 20 distinct
# colours), every two structures at least 30 apart in CIELab (CIE76), neighbouring levels 44:
# in OHIF, T11..L3 in shades of red could not be told apart (issue 19).
STRUCTURES: dict[int, tuple[str, Code, tuple[int, int, int]]] = {
    11: ("T11", codes.LEVEL_CODES["T11"], (128, 128, 0)),  # olive
    12: ("T12", codes.LEVEL_CODES["T12"], (0, 128, 128)),  # teal
    20: ("L1", codes.LEVEL_CODES["L1"], (230, 25, 75)),  # red
    21: ("L2", codes.LEVEL_CODES["L2"], (245, 130, 48)),  # orange
    22: ("L3", codes.LEVEL_CODES["L3"], (255, 225, 25)),  # yellow
    23: ("L4", codes.LEVEL_CODES["L4"], (60, 180, 75)),  # green
    24: ("L5", codes.LEVEL_CODES["L5"], (0, 130, 200)),  # blue
    25: ("L6 (transitional)", codes.LEVEL_CODES["L6"], (0, 0, 128)),  # navy
    26: ("S1 / sacrum", codes.LEVEL_CODES["S1"], (240, 50, 230)),  # magenta
    19: ("Vertebra, level not identified", codes.VERTEBRA, (128, 128, 128)),  # grey
    30: ("Intervertebral discs", codes.INTERVERTEBRAL_DISC, (70, 240, 240)),  # cyan
    40: ("Spinal canal", codes.SPINAL_CANAL, (220, 190, 255)),  # lavender
}


LEVEL_SEGMENTS = frozenset(STRUCTURES) - {19, 30, 40}  # the label values that name a level


def algorithm_equipment(producer: Producer, *algorithms: Algorithm | None) -> list[hd.ContributingEquipment]:
    """One Contributing Equipment item per network that made a result (IHE AIR Rev. 1.1
    6.5.3.1): manufacturer, the network's name as model name, our software version and the
    network's version, and the UID of the network's weights (`codes.device_uid`: new weights,
    a new UID). `None`s (no classifier) are skipped. highdicom adds the source's acquisition
    equipment before these and itself after.

    AIR puts that UID in Device UID (0018,1002). Recent editions of PS3.3 list Device UID in
    this sequence (highdicom 0.28's tables of the standard have it), but dicom3tools' dciodvfy
    (Debian's, 2022) does not and warns on every result, which are held to no warnings. So the
    UID is the item's Device Serial Number (0018,1000), which dciodvfy knows there, and the
    SR's Device Observer UID and Serial Number. When dciodvfy knows Device UID there, set it
    too."""
    return [hd.ContributingEquipment(
        manufacturer=producer.manufacturer,
        purpose_of_reference=codes.PROCESSING_EQUIPMENT,
        manufacturer_model_name=algorithm.name,
        software_versions=[producer.software_version, algorithm.version],
        device_serial_number=codes.device_uid(algorithm.sha256),
        contribution_description=(f"AI algorithm {algorithm.name} {algorithm.version}, "
                                  f"weights SHA-256 {algorithm.sha256}")[:1024],
    ) for algorithm in algorithms if algorithm is not None]


def levels_unconfirmed(flags: Sequence[str]) -> bool:
    """Whether the levels were counted from an S1 the method could not confirm."""
    return any(flag.partition(":")[0] == "levels_unconfirmed" for flag in flags)


def segment_values(labels: np.ndarray) -> list[int]:
    """Label values that become segments, in segment order (only structures found)."""
    present = set(np.unique(labels).tolist())
    unknown = present - set(STRUCTURES) - {0}
    if unknown:
        raise ValueError(f"label values {sorted(unknown)} have no segment definition")
    return [value for value in STRUCTURES if value in present]


def source_frames(series: Series, labels: np.ndarray) -> tuple[list[Dataset], np.ndarray]:
    """The source images and the labels on their pixels, frame for frame in source order.

    Single-frame images: one per slice, in slice order. One Enhanced MR image: its frames in
    frame-number order.
    """
    if labels.shape != series.shape:
        raise ValueError(f"labels {labels.shape} do not match the series {series.shape}")
    on_source = series.in_plane.to_source(labels)
    if all(ref.frame_number is None for ref in series.slices):
        return [series.header(ref.sop_instance_uid) for ref in series.slices], on_source
    instances = {ref.sop_instance_uid for ref in series.slices}
    if len(instances) != 1:
        raise ValueError("a SEG can reference one multi-frame image or single-frame images, "
                         f"this series has {len(instances)} multi-frame images")
    header = series.header(instances.pop())
    frames = np.zeros((int(header.NumberOfFrames), *on_source.shape[1:]), on_source.dtype)
    for index, ref in enumerate(series.slices):
        frames[ref.frame_number - 1] = on_source[index]
    return [header], frames


def build_segmentation(
    series: Series,
    labels: np.ndarray,
    algorithm: Algorithm,
    uids: ResultUIDs,
    producer: Producer = Producer(),
    series_number: int = 9901,
    flags: Sequence[str] = (),
) -> hd.seg.Segmentation:
    """A BINARY DICOM Segmentation of `labels` (canonical layout, values of pipeline.labels).

    `flags`: the finding's quality flags; with `levels_unconfirmed` the level segments say so."""
    unconfirmed = levels_unconfirmed(flags)
    sources, frames = source_frames(series, labels)
    values = segment_values(frames)
    if not values:
        raise ValueError("nothing was segmented: a SEG needs at least one segment")
    algorithm_id = hd.AlgorithmIdentificationSequence(
        name=algorithm.name, version=algorithm.version, family=codes.ARTIFICIAL_INTELLIGENCE,
        source="lumbarnode", parameters={"weights_sha256": algorithm.sha256},
    )
    descriptions = []
    numbered = np.zeros(frames.shape, np.uint8)
    for number, value in enumerate(values, start=1):
        label, property_type, rgb = STRUCTURES[value]
        level = value in LEVEL_SEGMENTS
        if unconfirmed and level:
            label = f"{label} ({UNCONFIRMED})"
        numbered[frames == value] = number
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=codes.ANATOMICAL_STRUCTURE,
            segmented_property_type=property_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm_id,
            tracking_uid=uids.derive_more("segment", value),
            tracking_id=label,
            anatomic_regions=[codes.LUMBAR_SPINE],
            display_color=hd.color.CIELabColor.from_rgb(*rgb),
        ))
        if unconfirmed and level:
            descriptions[-1].SegmentDescription = UNCONFIRMED_DESCRIPTION
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=numbered,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=uids.seg_series,
        series_number=series_number,
        sop_instance_uid=uids.seg_instance,
        instance_number=1,
        manufacturer=producer.manufacturer,
        manufacturer_model_name=producer.model_name,
        software_versions=producer.software_version,
        device_serial_number=producer.device_serial_number,
        content_label="LUMBAR_SPINE",
        content_description="Vertebrae L1-L5, S1, discs and spinal canal (automatic)",
        series_description=SEG_SERIES_DESCRIPTION,
        omit_empty_frames=False,
        contributing_equipment=algorithm_equipment(producer, algorithm),
    )
    producer.stamp(seg)
    copy_study(sources[0], seg)
    return seg
