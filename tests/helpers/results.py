"""Building and checking result objects in tests: a labelled MR series and its finding, their
UIDs, dciodvfy with the one warning our private coding scheme earns, and the SEG read back
frame by frame."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom

from dicom_io.geometry import InPlaneFlip
from dicom_io.mr_writer import MRSeriesInfo, Patient, build_mr_datasets
from dicom_io.results import Algorithm, LordosisFinding
from dicom_io.uids import ResultUIDs
from tests.helpers.dicom_files import enhanced_from, save
from tests.helpers.tools import require_tool

SPACING = (0.6, 0.9)  # anisotropic: rows 0.6 mm apart, columns 0.9 mm
POSITIONS = [-4.4, 0.0, 4.4]
SHAPE = (len(POSITIONS), 64, 48)
CNN = Algorithm("deteclordose", "1.0.0", "b" * 64)
PATIENT = Patient(name="RESULTS^TEST", id="RESULTS-1")
UNET = Algorithm("unet_4class", "1.0.0", "a" * 64)


def asymmetric_labels() -> np.ndarray:
    """Canonical labels with no symmetry: an L-shaped "L1", a corner "canal", a bar "S1",
    shifted by one row per slice so that slice order matters too."""
    labels = np.zeros(SHAPE, np.uint8)
    for k in range(SHAPE[0]):
        labels[k, 5 + k:20 + k, 4:9] = 20  # the L's stem, top left
        labels[k, 16 + k:20 + k, 9:22] = 20  # its foot, to the right
        labels[k, 2:6, 40:46] = 40  # top right corner
        labels[k, 50:58, 10 + 2 * k:30] = 26
    return labels


def write_series(folder: Path, labels: np.ndarray, flip: InPlaneFlip = InPlaneFlip(), enhanced: bool = False) -> Path:
    """MR pixels = 1000 + 10 * label value, so every label can be read back from the stored pixels."""
    volume = (1000 + 10 * labels.astype(np.uint16)).astype(np.uint16)
    info = MRSeriesInfo(key=f"results-test-{flip}-{enhanced}", patient=PATIENT, series_number=7)
    datasets = build_mr_datasets(volume, SPACING, POSITIONS, info, in_plane=flip)
    return save([enhanced_from(datasets)] if enhanced else datasets, folder)


def finding_for(series, endplates=None, lla=47.0, flags=("endplate_fit_poor:L1",)) -> LordosisFinding:
    return LordosisFinding(
        measured_slice=series.slices[1], lla_deg=lla, lla_class=None if lla is None else "normal",
        thresholds_deg=(39.0, 53.0),
        endplates={"L1": ((5.0, 4.0), (6.5, 20.0)), "S1": ((50.0, 12.0), (44.0, 29.5))} if endplates is None else endplates,
        flags=flags, segmentation=UNET, classifier=CNN, cnn_class="normal",
        cnn_probabilities={"hypolordosis": 0.1, "normal": 0.7, "hyperlordosis": 0.2}, levels=("L1", "S1"),
    )


def uids_for(series) -> ResultUIDs:
    return ResultUIDs.derive(series.series_instance_uid, [s.sop_instance_uid for s in series.slices], UNET.sha256)


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    out = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True)
    lines = (out.stdout + out.stderr).splitlines()
    return [x for x in lines if x.startswith("Error")], [x for x in lines if x.startswith("Warning")]


# The one warning we accept: dicom3tools knows the registered coding schemes only; a private
# scheme (99...) is allowed by PS3.16 section 8 and is declared in the Coding Scheme
# Identification Sequence.
PRIVATE_SCHEME_WARNING = "Unrecognized defined term <99LUMBARNODE> for value 1 of attribute <Coding Scheme Designator>"


def seg_frames_by_source(seg: pydicom.Dataset) -> dict[tuple[str, int | None, int], np.ndarray]:
    """(source SOP instance, source frame, segment number) -> the SEG frame, read from the raw
    functional groups (not through highdicom's own reader)."""
    pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    out = {}
    for index, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        source = frame.DerivationImageSequence[0].SourceImageSequence[0]
        number = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        frame_number = int(source.ReferencedFrameNumber) if "ReferencedFrameNumber" in source else None
        out[(source.ReferencedSOPInstanceUID, frame_number, number)] = pixels[index]
    return out


def segment_numbers(seg: pydicom.Dataset) -> dict[str, int]:
    return {str(s.SegmentLabel): int(s.SegmentNumber) for s in seg.SegmentSequence}
