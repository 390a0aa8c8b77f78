"""Real pixels from ../shared/data wrapped as DICOM: valid files, exact pixels, right geometry."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from dicom_io.mr_writer import to_stored_values
from dicom_io.series import load_series
from dicom_io.volumes import load_real, wrap_as_dicom
from tests.helpers.tools import dciodvfy_errors


def test_per_level_volume_wraps_into_a_valid_series_with_exact_pixels(shared_data, tmp_path):
    volume = load_real(shared_data / "chu2015-vb2" / "02.npz")
    assert volume.image.shape == (38, 381, 381)
    assert volume.label_names[20] == "L1" and volume.label_names[24] == "L5"
    paths = wrap_as_dicom(volume, tmp_path / "dicom")
    assert dciodvfy_errors(paths[len(paths) // 2]) == []
    series = load_series(tmp_path / "dicom")
    np.testing.assert_array_equal(series.pixels, volume.image.astype(np.float32))
    assert series.pixel_spacing_mm == pytest.approx((1.0, 1.0))
    assert series.slice_spacing_mm == pytest.approx(2.0)
    assert pydicom.dcmread(paths[0]).ImageType[:2] == ["DERIVED", "SECONDARY"]


def test_nifti_volume_is_reoriented_as_the_data_readme_says(shared_data, tmp_path):
    import nibabel as nib

    path = shared_data / "fastmonai-t2-volume" / "img.nii.gz"
    raw = np.asarray(nib.load(path).dataobj, dtype=np.float32)  # axes toward R, A, S
    volume = load_real(path)
    assert volume.spacing_mm == pytest.approx((4.4, 0.78, 0.78), abs=1e-3)
    # README: v[i][::-1, ::-1].T is the radiological view (superior up, anterior left);
    # our slices run from the patient's right to left, so slice k is source slice n-1-k.
    n = raw.shape[0]
    for k in (0, n // 2, n - 1):
        np.testing.assert_array_equal(volume.image[k], raw[n - 1 - k][::-1, ::-1].T)
    wrap_as_dicom(volume, tmp_path / "dicom")
    series = load_series(tmp_path / "dicom")
    np.testing.assert_array_equal(series.pixels, to_stored_values(volume.image).astype(np.float32))
    assert series.shape == (16, 400, 400)
    assert series.pixel_spacing_mm == pytest.approx((0.78, 0.78), abs=1e-4)
    assert series.slice_spacing_mm == pytest.approx(4.4, abs=1e-3)


def test_png_slices_stack_into_a_series_with_their_masks(shared_data, tmp_path):
    images = sorted((shared_data / "spider-t2-slices" / "images").glob("107_*.png"))[:5]
    volume = load_real(images, spacing_mm=(3.3, 0.5, 0.6))
    assert volume.labels is not None and set(np.unique(volume.labels)) <= {0, 1, 2, 3}
    wrap_as_dicom(volume, tmp_path / "dicom")
    series = load_series(tmp_path / "dicom")
    np.testing.assert_array_equal(series.pixels, volume.image.astype(np.float32))
    assert series.pixel_spacing_mm == pytest.approx((0.5, 0.6))


def test_spider_png_without_a_spacing_is_marked_as_assumed(shared_data):
    volume = load_real(shared_data / "vesal-t2-slices" / "images" / "03.png")
    assert volume.image.shape == (1, 256, 256)
    assert volume.spacing_mm == (1.0, 1.0, 1.0) and not volume.spacing_known


def test_unsupported_inputs_are_refused(tmp_path):
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(ValueError, match="unsupported input"):
        load_real(tmp_path / "x.txt")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="not a readable image"):
        load_real(tmp_path / "bad.png")
