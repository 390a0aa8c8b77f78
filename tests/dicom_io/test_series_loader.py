"""The series loader: canonical layout, geometry, transfer syntaxes, and every refusal."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from dicom_io import errors
from dicom_io.geometry import InPlaneFlip
from dicom_io.mr_writer import (
    MRSeriesInfo,
    build_mr_datasets,
    canonical_grid,
    write_mr_series,
)
from dicom_io.series import load_series
from tests.helpers.dicom_files import enhanced_from, save
from tests.helpers.tools import require_tool

SPACING = (0.6, 0.9)  # anisotropic on purpose: rows 0.6 mm apart, columns 0.9 mm
POSITIONS = [-4.4, 0.0, 4.4, 8.8]


@pytest.fixture
def volume(rng) -> np.ndarray:
    return rng.integers(0, 4096, size=(len(POSITIONS), 64, 48), dtype=np.uint16)


def datasets_for(volume, **kw) -> list[Dataset]:
    return build_mr_datasets(volume, SPACING, POSITIONS, MRSeriesInfo(key="loader-test"), **kw)


# --- layout and geometry ---------------------------------------------------------------

@pytest.mark.parametrize("flip", [InPlaneFlip(*f) for f in itertools.product((False, True), repeat=3)])
def test_every_stored_layout_loads_to_the_same_canonical_volume(tmp_path, volume, flip):
    folder = save(datasets_for(volume, in_plane=flip), tmp_path / "s")
    series = load_series(folder)
    assert series.in_plane == flip
    assert series.pixels.dtype == np.float32
    np.testing.assert_array_equal(series.pixels, volume.astype(np.float32))
    assert series.pixel_spacing_mm == pytest.approx(SPACING)  # canonical (row, col), not swapped
    np.testing.assert_allclose(series.slice_positions_mm, POSITIONS, atol=1e-6)
    assert series.slice_spacing_mm == pytest.approx(4.4)
    # The canonical grid places pixels where the writer put them in patient space.
    for k, grid in enumerate(series.grids):
        expected = canonical_grid(volume.shape[1:], SPACING, POSITIONS[k])
        for r, c in [(0, 0), (63, 0), (0, 47), (17, 5)]:
            np.testing.assert_allclose(grid.to_patient(r, c), expected.to_patient(r, c), atol=1e-4)
    # Mapping a canonical mask back to the source grid gives the stored pixels again.
    stored = pydicom.dcmread(folder / "001.dcm").pixel_array
    np.testing.assert_array_equal(flip.to_source(series.pixels[1]).astype(np.uint16), stored)


def test_slices_are_sorted_by_position_not_by_file_name_or_instance_number(tmp_path, volume):
    datasets = datasets_for(volume)
    shuffled = [datasets[i] for i in (2, 0, 3, 1)]
    for ds in shuffled:
        ds.InstanceNumber = 1  # useless numbering, as some exports have
    series = load_series(save(shuffled, tmp_path / "s"))
    np.testing.assert_array_equal(series.pixels, volume.astype(np.float32))
    assert [s.sop_instance_uid for s in series.slices] == [ds.SOPInstanceUID for ds in datasets]


def test_uids_and_references_are_reported(tmp_path, volume):
    datasets = datasets_for(volume)
    series = load_series([p for p in sorted(save(datasets, tmp_path / "s").iterdir())])
    assert series.study_instance_uid == datasets[0].StudyInstanceUID
    assert series.series_instance_uid == datasets[0].SeriesInstanceUID
    assert series.frame_of_reference_uid == datasets[0].FrameOfReferenceUID
    assert all(s.frame_number is None and s.sop_class_uid == datasets[0].SOPClassUID for s in series.slices)
    assert series.slice_thickness_mm == pytest.approx(4.0)


def test_rescale_slope_and_intercept_are_applied(tmp_path, volume):
    datasets = datasets_for(volume)
    for ds in datasets:
        ds.RescaleSlope, ds.RescaleIntercept = "0.5", "-100"
    series = load_series(save(datasets, tmp_path / "s"))
    np.testing.assert_allclose(series.pixels, volume * 0.5 - 100, rtol=1e-6)


def test_monochrome1_is_inverted_so_that_higher_means_brighter(tmp_path, volume):
    datasets = datasets_for(volume)
    for ds in datasets:
        ds.PhotometricInterpretation = "MONOCHROME1"
    series = load_series(save(datasets, tmp_path / "s"))
    np.testing.assert_array_equal(series.pixels, 4095 - volume.astype(np.float32))  # BitsStored 12


def test_oblique_sagittal_within_the_limit_is_accepted_and_beyond_it_refused(tmp_path, volume):
    def tilted(degrees: float) -> list[Dataset]:
        t = np.radians(degrees)
        row_dir = [np.sin(t), np.cos(t), 0.0]  # columns posterior, tilted toward the left
        datasets = datasets_for(volume)
        for k, ds in enumerate(datasets):
            ds.ImageOrientationPatient = [f"{x:.6f}" for x in (*row_dir, 0, 0, -1)]
            ds.ImagePositionPatient = [f"{x:.4f}" for x in (POSITIONS[k] / np.cos(t), 0, 0)]
        return datasets

    series = load_series(save(tilted(20), tmp_path / "ok"))
    assert series.obliquity_deg == pytest.approx(20, abs=0.01)
    with pytest.raises(errors.NotSagittalError, match="40 deg"):
        load_series(save(tilted(40), tmp_path / "too"))
    assert load_series(tmp_path / "too", max_obliquity_deg=45).obliquity_deg == pytest.approx(40, abs=0.01)


def test_irregular_slice_spacing_is_reported_as_a_warning(tmp_path, volume):
    datasets = datasets_for(volume)
    datasets[3].ImagePositionPatient[0] = "12.0"
    series = load_series(save(datasets, tmp_path / "s"))
    assert any(w.startswith("irregular_slice_spacing:") for w in series.warnings)


# --- transfer syntaxes ---------------------------------------------------------------------

def _dcmtk(tool: str, *flags: str):
    def convert(src: Path, dst: Path) -> None:
        subprocess.run([require_tool(tool), *flags, str(src), str(dst)], check=True, capture_output=True)
    return convert


def _pydicom(syntax: UID):
    def convert(src: Path, dst: Path) -> None:
        ds = pydicom.dcmread(src)
        if syntax.is_compressed:
            ds.compress(syntax, encoding_plugin="pylibjpeg")
        else:
            ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(dst, enforce_file_format=True)
    return convert


# Each syntax is produced by an independent encoder where one exists (DCMTK), else by pydicom.
TRANSFER_SYNTAXES = {
    ExplicitVRLittleEndian: _dcmtk("dcmconv", "+te"),
    ImplicitVRLittleEndian: _dcmtk("dcmconv", "+ti"),
    DeflatedExplicitVRLittleEndian: _dcmtk("dcmconv", "+td"),
    JPEGLosslessSV1: _dcmtk("dcmcjpeg", "+e1"),
    JPEGLossless: _dcmtk("dcmcjpeg", "+el"),
    JPEGLSLossless: _dcmtk("dcmcjpls", "+el"),
    RLELossless: _dcmtk("dcmcrle"),
    JPEG2000Lossless: _pydicom(JPEG2000Lossless),
}


@pytest.mark.parametrize("syntax", list(TRANSFER_SYNTAXES), ids=lambda s: UID(s).name)
def test_lossless_transfer_syntaxes_round_trip_exactly(tmp_path, volume, syntax):
    plain = write_mr_series(volume, SPACING, POSITIONS, MRSeriesInfo(key="ts"), tmp_path / "plain")
    converted = tmp_path / "converted"
    converted.mkdir()
    for path in plain:
        TRANSFER_SYNTAXES[syntax](path, converted / path.name)
    assert pydicom.dcmread(converted / plain[0].name).file_meta.TransferSyntaxUID == syntax
    series = load_series(converted)
    assert series.transfer_syntaxes == (str(syntax),)
    np.testing.assert_array_equal(series.pixels, volume.astype(np.float32))


def test_undecodable_transfer_syntax_is_refused_naming_the_syntax(tmp_path, volume):
    datasets = datasets_for(volume)
    folder = save(datasets, tmp_path / "s")
    path = folder / "000.dcm"
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video: nothing decodes it here
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(errors.UnsupportedTransferSyntaxError, match="MPEG2.*1.2.840.10008.1.2.4.100"):
        load_series(folder)


def test_corrupt_compressed_pixel_data_is_a_pixel_data_error(tmp_path, volume):
    plain = write_mr_series(volume, SPACING, POSITIONS, MRSeriesInfo(key="bad"), tmp_path / "s")
    _dcmtk("dcmcrle")(plain[0], plain[0])
    ds = pydicom.dcmread(plain[0])
    ds.PixelData = pydicom.encaps.encapsulate([b"\x01\x00\x00\x00" + b"\x00" * 60])  # an RLE header promising nothing
    ds.save_as(plain[0], enforce_file_format=True)
    with pytest.raises(errors.PixelDataError, match="RLE Lossless"):
        load_series(tmp_path / "s")


# --- Enhanced MR (multi-frame) ---------------------------------------------------------------


def test_enhanced_multiframe_mr_is_loaded_frame_by_frame(tmp_path, volume):
    enhanced = enhanced_from(datasets_for(volume))
    folder = save([enhanced], tmp_path / "e")
    series = load_series(folder)
    np.testing.assert_array_equal(series.pixels, volume * 2.0 + 10)
    assert [s.frame_number for s in series.slices] == [4, 3, 2, 1]  # stored in reverse, sorted by position
    assert {s.sop_instance_uid for s in series.slices} == {enhanced.SOPInstanceUID}
    assert series.pixel_spacing_mm == pytest.approx(SPACING)


def test_enhanced_mr_without_plane_positions_is_refused(tmp_path, volume):
    enhanced = enhanced_from(datasets_for(volume))
    del enhanced.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence
    with pytest.raises(errors.MissingGeometryError, match="frame 3"):
        load_series(save([enhanced], tmp_path / "e"))


# --- refusals ----------------------------------------------------------------------------------

def _axial(ds):
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.ImagePositionPatient = ["0", "0", ds.ImagePositionPatient[0]]


def _coronal(ds):
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]
    ds.ImagePositionPatient = ["0", ds.ImagePositionPatient[0], "0"]


def _ct(ds):
    ds.Modality = "CT"


def _no_pixels(ds):
    del ds.PixelData


def _no_orientation(ds):
    del ds.ImageOrientationPatient


def _colour(ds):
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelData = b"\x00" * (ds.Rows * ds.Columns * 3)


@pytest.mark.parametrize("mutate, error, message", [
    (_axial, errors.NotSagittalError, "axial"),
    (_coronal, errors.NotSagittalError, "coronal"),
    (_ct, errors.NotMRError, "modality is CT"),
    (_no_pixels, errors.MissingPixelDataError, "no Pixel Data"),
    (_no_orientation, errors.MissingGeometryError, "ImageOrientationPatient"),
    (_colour, errors.UnsupportedImageError, "RGB"),
])
def test_series_the_method_cannot_use_are_refused_with_a_reason(tmp_path, volume, mutate, error, message):
    datasets = datasets_for(volume)
    for ds in datasets:
        mutate(ds)
    with pytest.raises(error, match=message) as caught:
        load_series(save(datasets, tmp_path / "s"))
    assert caught.value.reason == error.reason != "refused"


def test_mixed_sizes_are_refused(tmp_path, volume, rng):
    datasets = datasets_for(volume)
    other = build_mr_datasets(rng.integers(0, 4096, (1, 32, 48), dtype=np.uint16), SPACING, [20.0],
                              MRSeriesInfo(key="loader-test"))[0]
    other.SOPInstanceUID = pydicom.uid.generate_uid()
    with pytest.raises(errors.MixedGeometryError, match="32x48"):
        load_series(save([*datasets, other], tmp_path / "s"))


def test_mixed_orientations_are_refused(tmp_path, volume):
    datasets = datasets_for(volume)
    datasets[2].ImageOrientationPatient = ["0", "0.9848", "0.1736", "0", "0.1736", "-0.9848"]
    with pytest.raises(errors.MixedGeometryError, match="orientation"):
        load_series(save(datasets, tmp_path / "s"))


def test_mixed_pixel_spacing_is_refused(tmp_path, volume):
    datasets = datasets_for(volume)
    datasets[1].PixelSpacing = ["0.9", "0.9"]
    with pytest.raises(errors.MixedGeometryError, match="pixel spacing"):
        load_series(save(datasets, tmp_path / "s"))


def test_two_series_in_one_folder_are_refused(tmp_path, volume):
    datasets = datasets_for(volume)
    datasets[1].SeriesInstanceUID = pydicom.uid.generate_uid()
    with pytest.raises(errors.MixedSeriesError, match="one series at a time"):
        load_series(save(datasets, tmp_path / "s"))


def test_duplicate_positions_are_refused(tmp_path, volume):
    datasets = datasets_for(volume)
    datasets[3].ImagePositionPatient = datasets[2].ImagePositionPatient
    with pytest.raises(errors.DuplicateSlicePositionError, match="same position"):
        load_series(save(datasets, tmp_path / "s"))


def test_a_single_slice_is_refused_as_a_series_but_loads_as_a_slice(tmp_path, volume):
    folder = save(datasets_for(volume)[:1], tmp_path / "s")
    with pytest.raises(errors.SingleSliceError):
        load_series(folder)
    series = load_series(folder, require_volume=False)
    assert series.shape == (1, 64, 48)
    assert series.slice_spacing_mm is None


@pytest.mark.parametrize("content", [b"", b"not dicom at all" * 20, b"\x00" * 128 + b"DICM" + b"\x02\x00"])
def test_malformed_files_are_refused_naming_the_file(tmp_path, volume, content):
    folder = save(datasets_for(volume), tmp_path / "s")
    (folder / "zz_broken.dcm").write_bytes(content)
    with pytest.raises(errors.MalformedFileError, match="zz_broken.dcm"):
        load_series(folder)


def test_truncated_file_is_refused(tmp_path, volume):
    folder = save(datasets_for(volume), tmp_path / "s")
    path = folder / "001.dcm"
    path.write_bytes(path.read_bytes()[:700])
    with pytest.raises(errors.SeriesRefused, match="001.dcm") as caught:
        load_series(folder)
    assert caught.value.reason in ("malformed_file", "pixel_data_error")


def test_empty_or_missing_folder_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(errors.NoDicomFilesError, match="no files"):
        load_series(tmp_path / "empty")
    with pytest.raises(errors.NoDicomFilesError, match="no such"):
        load_series(tmp_path / "missing")
