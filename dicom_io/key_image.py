"""The key image: the measured slice with the result burned in, as a Secondary Capture.

Every viewer shows a Secondary Capture image, including those that render neither SEG nor SR.
It is marked as what it is: ImageType DERIVED\\SECONDARY, BurnedInAnnotation YES, a source
image reference to the measured slice, and "not for primary diagnosis" in its description,
comments and in the picture itself (the renderer writes that line in the header band). The
networks whose results it shows are its Contributing Equipment (IHE AIR), as in the SEG and SR.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from dicom_io.results import LordosisFinding, Producer
from dicom_io.seg import algorithm_equipment
from dicom_io.series import Series
from dicom_io.study import copy_study
from dicom_io.uids import ResultUIDs

KEY_IMAGE_SERIES_DESCRIPTION = "Lumbar lordosis key image, not for diagnosis (lumbarnode)"
NOT_FOR_DIAGNOSIS = "Derived image with burned-in results; not for primary diagnosis"


def build_key_image(
    series: Series,
    finding: LordosisFinding,
    picture_rgb: np.ndarray,
    uids: ResultUIDs,
    producer: Producer = Producer(),
    series_number: int = 9903,
) -> hd.sc.SCImage:
    """A Secondary Capture of `picture_rgb` (rows, cols, 3 uint8), a canonical-layout picture
    of the measured slice (rows superior -> inferior, columns anterior -> posterior)."""
    if picture_rgb.ndim != 3 or picture_rgb.shape[2] != 3 or picture_rgb.dtype != np.uint8:
        raise ValueError(f"the key image must be (rows, cols, 3) uint8 RGB, got {picture_rgb.shape} {picture_rgb.dtype}")
    source = series.header(finding.measured_slice.sop_instance_uid)
    image = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=picture_rgb,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=uids.key_series,
        series_number=series_number,
        sop_instance_uid=uids.key_instance,
        instance_number=1,
        manufacturer=producer.manufacturer,
        patient_orientation=("P", "F"),  # along a row: posterior-ward; down a column: feet-ward
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        series_description=KEY_IMAGE_SERIES_DESCRIPTION,
        contributing_equipment=algorithm_equipment(producer, finding.segmentation, finding.classifier),
    )
    image.ImageType = ["DERIVED", "SECONDARY"]
    image.BurnedInAnnotation = "YES"
    # a lumbar spine, unpaired: without it dciodvfy asks for Laterality
    image.BodyPartExamined = str(source.get("BodyPartExamined", "")) or "LSPINE"
    image.ImageComments = NOT_FOR_DIAGNOSIS
    image.DerivationDescription = (
        "Measured slice with vertebra labels, L1 and S1 superior endplates, lumbar lordosis angle and "
        f"class burned in ({finding.segmentation.name} {finding.segmentation.version})")[:1024]
    image.SourceImageSequence = [_source_reference(source, finding.measured_slice.frame_number)]
    producer.stamp(image)
    copy_study(source, image)
    return image


def _source_reference(source: Dataset, frame: int | None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if frame is not None:
        item.ReferencedFrameNumber = frame
    return item
