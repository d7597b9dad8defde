"""Scan files: NXtomo round trip, plain NXtomo defaults, raw counts with flats and darks."""

import h5py
import numpy as np
import pytest

from ctbayes.io import read_scan, write_scan
from ctbayes.operators import make_ray_transform
from ctbayes.operators.fbp import fbp
from ctbayes.scan import Scan
from tests.conftest import disk_phantom, small_geometry


def _nxtomo(path, data, angles_deg, image_key=None, pixel_size=None):
    with h5py.File(path, "w") as f:
        f["entry/definition"] = "NXtomo"
        f["entry/instrument/detector/data"] = data
        f["entry/sample/rotation_angle"] = angles_deg
        if image_key is not None:
            f["entry/instrument/detector/image_key"] = image_key
        if pixel_size is not None:
            f["entry/instrument/detector/x_pixel_size"] = pixel_size
    return path


def test_round_trip_keeps_everything(tmp_path):
    g = small_geometry("fanflat")
    x = disk_phantom()
    scan = Scan(np.asarray(make_ray_transform(g)(x)), g, ground_truth=x, noise_std=0.1,
                references={"fbp": x * 2})
    back = read_scan(write_scan(scan, tmp_path / "s.h5"))
    np.testing.assert_array_equal(back.sinogram, scan.sinogram)
    np.testing.assert_array_equal(back.ground_truth, x)
    np.testing.assert_array_equal(back.references["fbp"], x * 2)
    np.testing.assert_allclose(back.geometry.angles, g.angles, rtol=0, atol=1e-15)
    assert (back.geometry.beam, back.geometry.det_spacing, back.geometry.source_origin,
            back.geometry.origin_detector, back.geometry.image_shape, back.noise_std) == \
        (g.beam, g.det_spacing, g.source_origin, g.origin_detector, g.image_shape, 0.1)
    with h5py.File(tmp_path / "s.h5") as f:  # readable as NXtomo by other tools
        assert f["entry/definition"][()] == b"NXtomo"
        assert f["entry/instrument/detector/data"].dtype == np.float32


def test_plain_nxtomo_defaults_and_orientation(tmp_path):
    """No ctbayes group: parallel beam, square image of side = detector count, and a sinogram
    made by ASTRA from image X at the stored angles reconstructs to X, not its transpose."""
    side = 48
    g = small_geometry("parallel", size=side, views=90)
    x = np.zeros((side, side), np.float32)
    x[8:14, 30:40] = 1.0  # top right: orientation errors move it elsewhere
    sino = np.asarray(make_ray_transform(g)(np.pad(x, 12)[:, :][12:-12, 12:-12]))
    path = _nxtomo(tmp_path / "plain.h5", sino, np.degrees(g.angles_array), pixel_size=1.0)
    scan = read_scan(path)
    assert scan.geometry.beam == "parallel"
    assert scan.geometry.image_shape == (g.det_count, g.det_count)
    assert scan.geometry.pixel_size == 1.0
    image = fbp(scan.sinogram, scan.geometry)
    pad = (g.det_count - side) // 2
    recovered = image[pad:pad + side, pad:pad + side]
    assert np.corrcoef(recovered.ravel(), x.ravel())[0, 1] > 0.9
    row, col = np.unravel_index(np.argmax(recovered), recovered.shape)
    assert 8 <= row < 14 and 30 <= col < 40


def test_raw_counts_with_flats_and_darks_are_normalised(tmp_path):
    g = small_geometry("parallel")
    line_integrals = np.asarray(make_ray_transform(g)(disk_phantom())) * 0.1
    flat, dark = 1000.0, 50.0
    counts = dark + (flat - dark) * np.exp(-line_integrals)
    data = np.concatenate([np.full((3, g.det_count), flat), np.full((2, g.det_count), dark), counts])
    keys = np.array([1, 1, 1, 2, 2] + [0] * g.num_views)
    angles = np.concatenate([np.zeros(5), np.degrees(g.angles_array)])
    scan = read_scan(_nxtomo(tmp_path / "raw.h5", data, angles, image_key=keys))
    np.testing.assert_allclose(scan.sinogram, line_integrals, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scan.geometry.angles, g.angles, atol=1e-12)


def test_subset_keeps_angles_and_views():
    g = small_geometry("parallel")
    scan = Scan(np.asarray(make_ray_transform(g)(disk_phantom())), g)
    sub = scan.subset([0, 5, 7])
    np.testing.assert_array_equal(sub.sinogram, scan.sinogram[[0, 5, 7]])
    np.testing.assert_allclose(sub.geometry.angles, np.asarray(g.angles)[[0, 5, 7]])


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    from ctbayes.io import atomic_path

    target = tmp_path / "out.h5"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []
