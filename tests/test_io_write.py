"""DICOM MR writer: round trip through the reader, rescale, errors, reproducible bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from radiospine.geometry import make_affine
from radiospine.io.decode import load_volume
from radiospine.io.headers import read_series_headers
from radiospine.io.write import MrImageHeader, derived_uid, write_mr_image


def _header(instance: int, position: list[float], **changes) -> MrImageHeader:
    fields = {
        "patient_id": "1234567", "study_id": "1234567", "study_instance_uid": derived_uid("study"),
        "series_instance_uid": derived_uid("series"), "sop_instance_uid": derived_uid("series", instance),
        "frame_of_reference_uid": derived_uid("frame"), "study_date": "20200102", "series_number": 3,
        "series_description": "Sagittal T1", "instance_number": instance, "image_position": position,
        "image_orientation": [0.0, 1.0, 0.0, 0.0, 0.0, -1.0], "pixel_spacing": (0.5, 0.75), "slice_thickness": 4.0,
        "spacing_between_slices": 4.5, "repetition_time": 550.0, "echo_time": 10.0}
    fields.update(changes)
    return MrImageHeader(**fields)


def test_round_trip_geometry_pixels_and_rescale(tmp_path: Path) -> None:
    folder = tmp_path / "1234567" / "987654"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 4096, (6, 5), dtype=np.uint16) for _ in range(3)]
    for k, image in enumerate(images):  # the normal is -x: instance numbers run against it
        write_mr_image(folder / f"{10 + k}.dcm", image,
                       _header(10 + k, [4.5 * k, -20.0, 30.0], rescale_slope=2.0, rescale_intercept=-10.0))
    stacks = read_series_headers(folder)
    assert len(stacks) == 1
    stack = stacks[0]
    assert stack.description == "Sagittal T1"
    assert stack.pixel_spacing == pytest.approx((0.5, 0.75))
    assert stack.slice_thickness == pytest.approx(4.0) and stack.spacing_between_slices == pytest.approx(4.5)
    expected = make_affine([9.0, -20.0, 30.0], [0, 1, 0, 0, 0, -1], (0.5, 0.75), [-4.5, 0.0, 0.0])
    np.testing.assert_allclose(stack.affine, expected, atol=1e-6)
    volume = load_volume(stack)
    assert volume.instance_numbers.tolist() == [12, 11, 10]  # ordered along the normal, not by number
    for k, instance in enumerate(volume.instance_numbers):
        np.testing.assert_array_equal(volume.voxels[k], images[instance - 10].astype(np.float32) * 2 - 10)


def test_same_header_and_pixels_give_the_same_bytes(tmp_path: Path) -> None:
    image = np.arange(30, dtype=np.uint16).reshape(5, 6)
    first = write_mr_image(tmp_path / "a.dcm", image, _header(1, [0.123456789, 2.0, -3.0]))
    second = write_mr_image(tmp_path / "b.dcm", image, _header(1, [0.123456789, 2.0, -3.0]))
    assert first.read_bytes() == second.read_bytes()
    assert derived_uid("a", 1) == derived_uid("a", 1) != derived_uid("a", 2)


@pytest.mark.parametrize("pixels, message", [
    (np.zeros((4, 4), dtype=np.float32), "uint16"),
    (np.zeros((2, 4, 4), dtype=np.uint16), "uint16"),
    (np.full((4, 4), 5000, dtype=np.uint16), "12 bits"),
])
def test_bad_pixels_are_refused(tmp_path: Path, pixels: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_mr_image(tmp_path / "x.dcm", pixels, _header(1, [0.0, 0.0, 0.0]))


def test_bad_header_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ImageOrientationPatient"):
        write_mr_image(tmp_path / "x.dcm", np.zeros((2, 2), np.uint16),
                       _header(1, [0.0, 0.0, 0.0], image_orientation=[1.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="StudyID"):
        write_mr_image(tmp_path / "x.dcm", np.zeros((2, 2), np.uint16), _header(1, [0.0, 0.0, 0.0], study_id="1" * 17))
