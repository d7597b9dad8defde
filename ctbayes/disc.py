"""A homogeneous disc fitted to a fan-beam sinogram: the ground truth of a real scan.

HTC2022's `solid_disc` is an acrylic disc without holes, so its true image is known up to
four numbers: the centre (x, y), the radius and the attenuation. They are fitted here by
least squares in the sinogram itself, not to a reconstruction, so that the truth carries
neither an FBP's noise nor its artefacts. The model is exact for a disc: the line integral
of attenuation mu along a ray at distance d from the centre is mu 2 sqrt(r^2 - d^2)
(0 for d >= r), averaged over `SUB_RAYS` rays across each detector pixel's width (the
detector integrates over its pixel). Rays follow ASTRA's `fanflat` convention (source at
(sin t, -cos t) so, detector centre at (-sin t, cos t) od, detector axis (cos t, sin t));
`render_disc` puts the fitted disc on the image grid as the mean over each pixel's area.

Coordinates are in the geometry's length unit (mm for HTC2022), x along the image columns
and y up (row 0 is the top row, `ctbayes.geometry`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ctbayes.errors import InputError
from ctbayes.geometry import Geometry

SUB_RAYS = 4  # rays per detector pixel: the model's average over the pixel's width
RENDER_SUPERSAMPLE = 16  # sub-pixels per side of a pixel when rendering the disc


@dataclasses.dataclass(frozen=True)
class Disc:
    """A disc of constant attenuation `value` (per length unit) centred at (x, y)."""

    x: float
    y: float
    radius: float
    value: float


@dataclasses.dataclass(frozen=True)
class DiscFit:
    """A fitted disc with the quality of its fit: residual_rms, the rms of measured minus
    modelled line integrals; noise_std, the measurement noise estimated from neighbouring
    views (`view_noise_std`), which a model that is right up to noise should match."""

    disc: Disc
    residual_rms: float
    noise_std: float


def _rays(geometry: Geometry, sub_rays: int):
    """(source, direction) per ray, shapes (views, 1, 2) and (views, det * sub_rays, 2):
    for each detector pixel sub_rays rays to points spread evenly over its width."""
    if geometry.beam != "fanflat":
        raise InputError(f"A disc fit needs a fanflat geometry, got {geometry.beam}.")
    t = np.asarray(geometry.angles_array, np.float64)[:, None]
    so, od, w = geometry.source_origin, geometry.origin_detector, geometry.det_spacing
    source = np.stack([np.sin(t) * so, -np.cos(t) * so], -1)
    centre = np.stack([-np.sin(t) * od, np.cos(t) * od], -1)
    axis = np.stack([np.cos(t), np.sin(t)], -1)
    n = geometry.det_count
    u = (np.arange(n)[:, None] - (n - 1) / 2 + (np.arange(sub_rays) + 0.5) / sub_rays - 0.5)
    u = (u.ravel() * w)[None, :, None]
    points = centre + u * axis
    direction = points - source
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    return source, direction


def disc_sinogram(disc: Disc, geometry: Geometry, sub_rays: int = SUB_RAYS, rays=None):
    """The line integrals (views, detectors) of a disc in a fan-beam geometry, each the mean
    over sub_rays rays across its detector pixel. rays: `_rays(geometry, sub_rays)`, reused
    by a fit that calls this many times."""
    source, direction = _rays(geometry, sub_rays) if rays is None else rays
    rel = np.array([disc.x, disc.y]) - source  # source -> centre
    cross = rel[..., 0] * direction[..., 1] - rel[..., 1] * direction[..., 0]
    chord = 2 * np.sqrt(np.maximum(disc.radius ** 2 - cross ** 2, 0.0))
    views = chord.shape[0]
    return disc.value * chord.reshape(views, geometry.det_count, sub_rays).mean(-1)


def view_noise_std(sinogram) -> float:
    """The white measurement noise std from neighbouring views: y_k - (y_{k-1} + y_{k+1}) / 2
    has variance 1.5 sigma^2 where the views change slowly (finely sampled angles), so the
    rms of that difference / sqrt(1.5) estimates sigma."""
    y = np.asarray(sinogram, np.float64)
    if y.shape[0] < 3:
        raise InputError("estimating the noise from neighbouring views needs at least 3 views.")
    diff = y[1:-1] - 0.5 * (y[:-2] + y[2:])
    return float(np.sqrt(np.mean(diff ** 2) / 1.5))


def initial_disc(sinogram, geometry: Geometry) -> Disc:
    """A start for the fit from the sinogram's support: the rays that meet the object, per
    view, give the centre's position across the fan and the radius; the mass gives value."""
    y = np.asarray(sinogram, np.float64)
    threshold = 0.1 * y.max()
    width = geometry.det_spacing
    n = geometry.det_count
    magnification = (geometry.source_origin + geometry.origin_detector) / geometry.source_origin
    u = (np.arange(n) - (n - 1) / 2) * width / magnification  # at the rotation axis
    centres, radii = [], []
    for row in y:
        hit = np.flatnonzero(row > threshold)
        if hit.size:
            centres.append(0.5 * (u[hit[0]] + u[hit[-1]]))
            radii.append(0.5 * (u[hit[-1]] - u[hit[0]]))
    if not centres:
        raise InputError("the sinogram holds no object to fit a disc to.")
    t = np.asarray(geometry.angles_array)[:len(y)]
    # the centre's shadow moves as x cos t + y sin t along the detector axis (cos t, sin t)
    design = np.stack([np.cos(t), np.sin(t)], -1)[[i for i, row in enumerate(y)
                                                  if (row > threshold).any()]]
    (cx, cy), *_ = np.linalg.lstsq(design, np.asarray(centres), rcond=None)
    radius = float(np.median(radii))
    value = float(y.max() / (2 * radius))
    return Disc(float(cx), float(cy), radius, value)


def fit_disc(sinogram, geometry: Geometry, sub_rays: int = SUB_RAYS, start: Disc | None = None):
    """The disc (centre, radius, attenuation) whose `disc_sinogram` fits the measured one best
    in least squares (scipy's trust-region least_squares on the four numbers), with the fit's
    residual rms and the noise std from neighbouring views (`DiscFit`)."""
    from scipy.optimize import least_squares

    y = np.asarray(sinogram, np.float64)
    if y.shape != geometry.sinogram_shape:
        raise InputError(f"the sinogram has shape {y.shape}, the geometry expects "
                         f"{geometry.sinogram_shape}.")
    rays = _rays(geometry, sub_rays)
    disc = start or initial_disc(y, geometry)
    scale = np.array([geometry.pixel_size, geometry.pixel_size, geometry.pixel_size, disc.value])

    def residual(p):
        return (disc_sinogram(Disc(*(p * scale)), geometry, sub_rays, rays) - y).ravel()

    p0 = np.array([disc.x, disc.y, disc.radius, disc.value]) / scale
    best = least_squares(residual, p0, x_scale="jac", method="trf")
    fitted = Disc(*(float(v) for v in best.x * scale))
    rms = float(np.sqrt(np.mean(best.fun ** 2)))
    return DiscFit(fitted, rms, view_noise_std(y))


def render_disc(disc: Disc, geometry: Geometry, supersample: int = RENDER_SUPERSAMPLE):
    """The disc on the geometry's image grid: each pixel the mean of the disc's indicator
    times its value over supersample x supersample points spread over the pixel's area."""
    rows, cols = geometry.image_shape
    size = geometry.pixel_size
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    x = ((np.arange(cols)[:, None] - (cols - 1) / 2 + offsets) * size).ravel()
    y = (((rows - 1) / 2 - np.arange(rows)[:, None] - offsets) * size).ravel()
    inside = (x[None, :] - disc.x) ** 2 + (y[:, None] - disc.y) ** 2 <= disc.radius ** 2
    area = inside.reshape(rows, supersample, cols, supersample).mean((1, 3))
    return (disc.value * area).astype(np.float32)
