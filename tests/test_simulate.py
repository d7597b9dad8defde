"""Phantoms and simulated scans: properties, orientation, noise statistics, file round trip."""

import dataclasses

import numpy as np
import pytest

from ctbayes.errors import InputError
from ctbayes.io import read_scan, write_scan
from ctbayes.operators import make_ray_transform
from ctbayes.phantoms import PHANTOMS, make_phantom, shepp_logan
from ctbayes.simulate import POISSON_MAX_ATTENUATION, default_geometry, simulate_scan


def _row(y, size):
    """Row index of the pixel at height y in [-1, 1] (y up, row 0 at the top)."""
    return int((1 - y) / 2 * size)


def _col(x, size):
    return int((x + 1) / 2 * size)


# -- phantoms ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", PHANTOMS)
@pytest.mark.parametrize("size", [32, 48])
def test_phantom_properties(name, size):
    image = make_phantom(name, size, seed=3)
    assert image.shape == (size, size) and image.dtype == np.float32
    assert image.min() >= 0 and image.max() <= 1 and image.max() > 0.5
    centre = np.arange(size) + 0.5 - size / 2
    outside = centre[None, :] ** 2 + centre[:, None] ** 2 > (size / 2) ** 2
    assert np.all(image[outside] == 0)
    np.testing.assert_array_equal(image, make_phantom(name, size, seed=3))


@pytest.mark.parametrize("name", ["ellipses", "rectangles"])
def test_random_phantoms_depend_on_seed(name):
    assert not np.array_equal(make_phantom(name, 32, seed=0), make_phantom(name, 32, seed=1))


def test_bad_phantom_arguments():
    with pytest.raises(InputError, match="Unknown phantom"):
        make_phantom("walnut", 32, 0)
    with pytest.raises(InputError, match="size"):
        make_phantom("ellipses", 2, 0)
    with pytest.raises(InputError, match="seed"):
        make_phantom("rectangles", 32, -1)


def test_shepp_logan_is_upright():
    size = 64
    image = shepp_logan(size)
    mid = size // 2
    # skull: the first non-zero pixel of the centre column is near the top and bright
    top = np.flatnonzero(image[:, mid])[0]
    assert top < 4 and image[top + 1, mid] == pytest.approx(1.0)
    # brain at the centre; the bright ellipse (0.3) above it, plain brain (0.2) below
    assert image[mid, mid] == pytest.approx(0.2)
    assert image[_row(0.35, size), mid] == pytest.approx(0.3)
    assert image[_row(-0.35, size), mid] == pytest.approx(0.2)
    # the dark ventricles ("eyes") lie left and right of the centre, not above and below
    assert image[_row(0.0, size), _col(-0.22, size)] == pytest.approx(0.0, abs=1e-6)
    assert image[_row(0.0, size), _col(0.22, size)] == pytest.approx(0.0, abs=1e-6)
    # the larger ventricle is on the left (small column index)
    dark = (image < 0.05) & (np.hypot(*np.mgrid[-mid:mid, -mid:mid] + 0.5) < 0.6 * mid)
    assert dark[:, :mid].sum() > 1.2 * dark[:, mid:].sum()
    # the three small features sit near the bottom
    band = image[_row(-0.56, size):_row(-0.65, size) + 1, _col(-0.12, size):_col(0.1, size)]
    assert band.max() > 0.22


# -- geometry ---------------------------------------------------------------------------
def test_default_geometry():
    g = default_geometry(64)
    assert g.beam == "parallel" and g.det_count == 92 and g.pixel_size == 1 and g.det_spacing == 1
    np.testing.assert_allclose(g.angles_array, np.radians(np.arange(30) * 6.0))
    f = default_geometry(128, "fanflat", views=60, arc_degrees=360.0)
    assert (f.source_origin, f.origin_detector, f.det_spacing) == (256, 128, 1.5)
    assert f.det_count % 2 == 0 and f.num_views == 60
    assert np.degrees(f.angles_array[-1]) == pytest.approx(354.0)
    assert default_geometry(64, det_count=50).det_count == 50
    with pytest.raises(InputError, match="fanflat"):
        default_geometry(64, source_origin=100.0)
    with pytest.raises(InputError, match="beam"):
        default_geometry(64, beam="cone")


@pytest.mark.parametrize("size", [32, 63])
def test_parallel_detector_sees_whole_image(size):
    """Every view of a full square keeps its mass: nothing falls off the detector."""
    g = default_geometry(size, views=24)
    sino = simulate_scan(np.ones((size, size), np.float32), g, noise="none").sinogram
    np.testing.assert_allclose(sino.sum(axis=1) * g.det_spacing, size ** 2, rtol=2e-3)


@pytest.mark.parametrize("size", [32, 64])
def test_fanflat_detector_sees_whole_image(size):
    """A wider detector of the same pitch catches nothing outside the default one."""
    g = default_geometry(size, "fanflat", views=24, arc_degrees=360.0)
    wide = dataclasses.replace(g, det_count=g.det_count + 20)
    sino = simulate_scan(np.ones((size, size), np.float32), wide, noise="none").sinogram
    assert np.all(sino[:, :10] == 0) and np.all(sino[:, -10:] == 0)


@pytest.mark.parametrize("beam", ["parallel", "fanflat"])
def test_phantom_sinogram_has_empty_margins(beam):
    g = default_geometry(48, beam, views=20, arc_degrees=360.0)
    sino = simulate_scan(make_phantom("ellipses", 48, 0), g, noise="none").sinogram
    assert np.all(sino[:, :3] == 0) and np.all(sino[:, -3:] == 0) and sino.max() > 0


# -- simulation -------------------------------------------------------------------------
def test_noiseless_scan_is_the_projection():
    image = shepp_logan(32)
    g = default_geometry(32, views=12)
    scan = simulate_scan(image, g, noise="none", supersample=1)
    expected = np.asarray(make_ray_transform(g, backend="astra", use_cuda=False)(image))
    np.testing.assert_array_equal(scan.sinogram, expected)
    np.testing.assert_array_equal(scan.ground_truth, image)
    assert scan.noise_std == 0 and scan.geometry == g


@pytest.mark.parametrize("beam", ["parallel", "fanflat"])
def test_supersampling_changes_the_data_only_slightly(beam):
    image = make_phantom("rectangles", 48, 4)
    g = default_geometry(48, beam, views=20, arc_degrees=360.0)
    coarse = simulate_scan(image, g, noise="none", supersample=1).sinogram
    fine = simulate_scan(image, g, noise="none", supersample=2).sinogram
    rel = np.linalg.norm(fine - coarse) / np.linalg.norm(coarse)
    assert 0 < rel < 0.05


def test_gaussian_noise_level():
    image = shepp_logan(64)
    g = default_geometry(64, views=30)
    clean = simulate_scan(image, g, noise="none").sinogram.astype(np.float64)
    scan = simulate_scan(image, g, noise="gaussian", noise_level=0.05, seed=7)
    expected = 0.05 * np.mean(np.abs(clean))
    assert scan.noise_std == pytest.approx(expected, rel=1e-5)
    assert np.std(scan.sinogram - clean) == pytest.approx(expected, rel=0.05)
    np.testing.assert_array_equal(scan.sinogram, simulate_scan(image, g, seed=7).sinogram)
    assert not np.array_equal(scan.sinogram, simulate_scan(image, g, seed=8).sinogram)


def test_poisson_noise_matches_theory():
    """Var(line integral) = exp(mu p) / (photons mu^2) with mu = POISSON_MAX_ATTENUATION / max p."""
    image = shepp_logan(64)
    g = default_geometry(64, views=60)
    photons = 1e4
    clean = simulate_scan(image, g, noise="none", supersample=1).sinogram.astype(np.float64)
    scan = simulate_scan(image, g, noise="poisson", photons=photons, seed=3, supersample=1)
    mu = POISSON_MAX_ATTENUATION / clean.max()
    variance = np.exp(mu * clean) / (photons * mu ** 2)
    z = (scan.sinogram - clean) / np.sqrt(variance)
    assert np.var(z) == pytest.approx(1.0, rel=0.10)
    assert abs(np.mean(z)) < 0.1
    assert scan.noise_std == pytest.approx(np.sqrt(variance.mean()), rel=1e-4)


@pytest.mark.parametrize("beam, thin_ray", [("parallel", "linear"), ("fanflat", "line_fanflat")])
def test_a_finer_image_is_measured_by_detector_bins_and_scored_by_its_block_means(beam, thin_ray):
    """No inverse crime: a 4x finer phantom is projected as a detector measures it, each bin
    integrating over its width (the mean of 8 thin rays spread across the bin), which differs
    from the grid projection of its block means (partial-volume edges); the truth is those
    means."""
    g = default_geometry(32, beam, views=10)
    fine = make_phantom("rectangles", 128, 2)
    scan = simulate_scan(fine, g, noise="none")
    np.testing.assert_allclose(scan.ground_truth, fine.reshape(32, 4, 32, 4).mean((1, 3)))
    assert scan.geometry == g and scan.sinogram.shape == g.sinogram_shape
    sub = 8  # thin rays per detector bin
    sub_bins = dataclasses.replace(g.with_image((128, 128)), det_count=g.det_count * sub,
                                   det_spacing=g.det_spacing / sub)
    thin = np.asarray(make_ray_transform(sub_bins, "astra", thin_ray)(fine))
    bin_means = thin.reshape(len(g.angles), g.det_count, sub).mean(-1)
    peak = np.abs(bin_means).max()
    assert np.sqrt(np.mean((scan.sinogram - bin_means) ** 2)) < 1e-3 * peak
    on_grid = np.asarray(make_ray_transform(g, "astra")(scan.ground_truth))
    assert np.sqrt(np.mean((scan.sinogram - on_grid) ** 2)) > 1e-3 * peak
    with pytest.raises(InputError, match="integer multiple"):
        simulate_scan(np.zeros((48, 48)), g)


def test_bad_simulation_arguments():
    g = default_geometry(32)
    image = np.zeros((32, 32), np.float32)
    with pytest.raises(InputError, match="noise model"):
        simulate_scan(image, g, noise="speckle")
    with pytest.raises(InputError, match="shape"):
        simulate_scan(np.zeros((16, 16)), g)
    with pytest.raises(InputError, match="supersampling"):
        simulate_scan(image, g, supersample=0)
    with pytest.raises(InputError, match="photon"):
        simulate_scan(image, g, noise="poisson", photons=0.0)


def test_scan_round_trips_through_file(tmp_path):
    image = make_phantom("ellipses", 32, 1)
    g = default_geometry(32, "fanflat", views=16, arc_degrees=360.0)
    scan = simulate_scan(image, g, noise="gaussian", seed=1)
    back = read_scan(write_scan(scan, tmp_path / "scan.h5"))
    np.testing.assert_array_equal(back.sinogram, scan.sinogram)
    np.testing.assert_array_equal(back.ground_truth, scan.ground_truth)
    assert back.noise_std == scan.noise_std
    # angles are stored in degrees: radians -> degrees -> radians may move the last bit
    np.testing.assert_allclose(back.geometry.angles_array, g.angles_array, rtol=0, atol=1e-15)
    assert dataclasses.replace(back.geometry, angles=g.angles) == g
