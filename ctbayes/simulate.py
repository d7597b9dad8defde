"""Simulated scans: a default geometry for an image, and a noisy sinogram of it.

The sinogram is computed from a `supersample`-times finer copy of the image (pixel
replication) so that the data do not come from the very operator a reconstruction inverts
(the "inverse crime"), or from an image given k times finer than the grid, whose block means
are then the truth, so that no grid image reproduces the data exactly (each detector bin
integrating over its width, `simulate_scan`). Projection uses
ASTRA's CPU projectors, so that a scan is reproducible bit for bit from its seed on any
machine, with or without a GPU.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import numbers

import numpy as np

from ctbayes.errors import InputError
from ctbayes.io.inputs import MIN_ARC_DEGREES
from ctbayes.geometry import Geometry
from ctbayes.operators import make_ray_transform
from ctbayes.operators.astra_backend import BIN_INTEGRATING_PROJECTOR
from ctbayes.scan import Scan

NOISE_MODELS = ("gaussian", "poisson", "none")
SIM_BEAMS = ("parallel", "fanflat")
POISSON_MAX_ATTENUATION = 3.0  # largest attenuation line integral in a Poisson simulation
_NOISE_STREAM = 1  # keeps noise draws independent of a phantom drawn from the same seed


def default_geometry(size: int, beam: str = "parallel", views: int = 30, arc_degrees: float = 180.0,
                     det_count: int | None = None, source_origin: float | None = None,
                     origin_detector: float | None = None) -> Geometry:
    """A geometry for a size x size image of pixel size 1 whose detector sees the whole image.

    Angles: `views` equally spaced over `arc_degrees`, endpoint excluded. Parallel beam:
    detector spacing 1, det_count = ceil(size * sqrt(2)) rounded up to even. Fan beam:
    source_origin = 2 * size and origin_detector = size by default, detector spacing = the
    magnification (one image pixel at the rotation axis per detector pixel), and det_count
    (rounded up to even) such that the fan covers the image's circumscribed circle. A given
    det_count keeps that spacing, so a smaller one narrows the field of view.
    """
    _check_int("image size", size, 1)
    _check_int("number of views", views, 1)
    if beam not in SIM_BEAMS:
        raise InputError(f"Simulation supports the beams {', '.join(SIM_BEAMS)}, got {beam!r}.")
    if not (math.isfinite(arc_degrees) and arc_degrees > 0):
        raise InputError(f"The angular arc must be a positive number of degrees, got {arc_degrees}.")
    if det_count is not None:
        _check_int("detector count", det_count, 1)
    angles = np.linspace(0.0, math.radians(arc_degrees), views, endpoint=False)
    radius = size / math.sqrt(2)  # half the image diagonal
    if beam == "parallel":
        if source_origin is not None or origin_detector is not None:
            raise InputError("Source and detector distances apply to fanflat beams only.")
        return Geometry("parallel", angles, det_count or _even(2 * radius), (size, size))
    source_origin = 2.0 * size if source_origin is None else float(source_origin)
    origin_detector = float(size) if origin_detector is None else float(origin_detector)
    if not source_origin > radius:
        raise InputError(
            f"The source must lie outside the image: source_origin {source_origin:g} is not "
            f"larger than half the image diagonal ({radius:.4g})."
        )
    spacing = (source_origin + origin_detector) / source_origin
    # the ray tangent to the circumscribed circle meets the flat detector at this offset
    half_width = (source_origin + origin_detector) * radius / math.sqrt(source_origin ** 2 - radius ** 2)
    return Geometry("fanflat", angles, det_count or _even(2 * half_width / spacing), (size, size),
                    det_spacing=spacing, source_origin=source_origin, origin_detector=origin_detector)


def simulate_scan(image, geometry: Geometry, noise: str = "gaussian", noise_level: float = 0.05,
                  photons: float = 1e4, seed: int = 0, supersample: int = 2) -> Scan:
    """A scan of `image` (ground truth) in `geometry`, with noise, reproducible from `seed`.

    noise:
    - "gaussian": additive white noise of std noise_level * mean(|A x|); noise_std is that std.
    - "poisson": photon counts N ~ Poisson(photons * exp(-mu * A x)) with mu such that the
      largest line integral is POISSON_MAX_ATTENUATION (5 % transmission), returned as line
      integrals -log(max(N, 1) / photons) / mu in the image's units. Their variance is about
      exp(mu * A x) / (photons * mu^2) per bin; noise_std is the root mean of that variance over
      the sinogram, an estimate for methods that assume one Gaussian noise level.
    - "none": the exact projection; noise_std is 0.
    supersample: project a supersample-times finer, pixel-replicated copy of the image; 1
    projects on the image's own grid.

    The image may also be given at k times the geometry's resolution (k >= 2, e.g. a phantom
    rendered finer): it is projected as it is, and the ground truth is its k x k block means.
    Edges then cut through pixels as a real object's do, and no image on the grid reproduces
    the measurement exactly (no inverse crime); supersample is then not used. Each detector
    bin then integrates over its width, as a real one does (ASTRA's strip projectors): one
    thin ray per bin would point-sample the fine edges, an aliasing no detector produces,
    which inflates the misfit to the grid and costs the DIP accuracy.
    """
    if geometry.beam not in SIM_BEAMS:
        raise InputError(f"Simulation supports the beams {', '.join(SIM_BEAMS)}, got {geometry.beam!r}.")
    image = np.asarray(image, dtype=np.float32)
    factor = _resolution_factor(image.shape, geometry.image_shape)
    if not np.all(np.isfinite(image)):
        raise InputError("The image contains NaN or infinite values.")
    if noise not in NOISE_MODELS:
        raise InputError(f"Unknown noise model {noise!r}; expected one of {', '.join(NOISE_MODELS)}.")
    if not (math.isfinite(noise_level) and noise_level >= 0):
        raise InputError(f"The noise level must be a non-negative number, got {noise_level}.")
    if not (math.isfinite(photons) and photons > 0):
        raise InputError(f"The photon count must be a positive number, got {photons}.")
    _check_int("random seed", seed, 0)
    _check_int("supersampling factor", supersample, 1)

    if factor > 1:  # a finer image: project it as it is, the truth is its block means
        fine, (rows, cols) = image, geometry.image_shape
        image = fine.reshape(rows, factor, cols, factor).mean((1, 3))
    else:
        fine = np.repeat(np.repeat(image, supersample, axis=0), supersample, axis=1)
    fine_geometry = geometry.with_image(fine.shape) if fine.shape != image.shape else geometry
    projector = BIN_INTEGRATING_PROJECTOR[geometry.beam] if factor > 1 else None
    transform = make_ray_transform(fine_geometry, backend="astra", projector=projector,
                                   use_cuda=False)
    clean = np.asarray(transform(fine))
    rng = np.random.default_rng([_NOISE_STREAM, int(seed)])

    if noise == "none":
        sinogram, noise_std = clean, 0.0
    elif noise == "gaussian":
        noise_std = float(noise_level * np.mean(np.abs(clean)))
        sinogram = clean + rng.normal(0.0, noise_std, clean.shape)
    else:
        peak = float(clean.max())
        mu = POISSON_MAX_ATTENUATION / peak if peak > 0 else 1.0
        projection = clean.astype(np.float64) * mu
        counts = rng.poisson(photons * np.exp(-projection))
        sinogram = -np.log(np.maximum(counts, 1) / photons) / mu
        noise_std = float(np.sqrt(np.mean(np.exp(projection) / photons)) / mu)
    return Scan(sinogram=sinogram, geometry=geometry, ground_truth=image, noise_std=noise_std)


def _resolution_factor(shape, grid) -> int:
    """k where an image of `shape` is k times finer than the 2D `grid` (1: the grid itself)."""
    if len(shape) == 2 and len(grid) == 2 and shape[0] % grid[0] == 0:
        k = shape[0] // grid[0]
        if k >= 1 and tuple(shape) == (k * grid[0], k * grid[1]):
            return k
    raise InputError(
        f"The image has shape {tuple(shape)} but the geometry expects {tuple(grid)} "
        f"or an integer multiple of it."
    )


def _even(width: float) -> int:
    """The smallest even integer >= width."""
    n = math.ceil(width - 1e-9)
    return n + n % 2


def _check_int(what: str, value, minimum: int):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InputError(f"The {what} must be an integer of at least {minimum}, got {value!r}.")


_SCAN_DEFAULTS = {name: p.default for name, p in
                  inspect.signature(simulate_scan).parameters.items()}
_GEOMETRY_DEFAULTS = {name: p.default for name, p in
                      inspect.signature(default_geometry).parameters.items()}
MAX_RENDER = 16


@dataclasses.dataclass(frozen=True)
class SimulationConfig:
    """A simulated scan of a phantom, as `ctbayes simulate` makes it (defaults from
    `default_geometry` and `simulate_scan`).

    phantom: one of `phantoms.PHANTOMS`, drawn with `seed`. size: image side (>= 8 pixels).
    beam, views, det_count: the geometry (`default_geometry`); arc: the angular range in
      degrees (None: 180 for parallel beam, 360 for fan beam).
    noise, noise_level, photons, supersample, seed: the measurement (`simulate_scan`).
    render: draw the phantom this many times finer (1 to 16) and measure it there with
      detector bins of finite width; the truth is its block means (no inverse crime).
    """

    phantom: str = "shepp-logan"
    size: int = 64
    beam: str = _GEOMETRY_DEFAULTS["beam"]
    views: int = _GEOMETRY_DEFAULTS["views"]
    arc: float | None = None
    det_count: int | None = _GEOMETRY_DEFAULTS["det_count"]
    noise: str = _SCAN_DEFAULTS["noise"]
    noise_level: float = _SCAN_DEFAULTS["noise_level"]
    photons: float = _SCAN_DEFAULTS["photons"]
    supersample: int = _SCAN_DEFAULTS["supersample"]
    render: int = 1
    seed: int = _SCAN_DEFAULTS["seed"]

    def __post_init__(self):
        if self.size < 8:
            raise InputError(f"The image size must be at least 8 pixels, got {self.size}.")
        if not 1 <= self.render <= MAX_RENDER:
            raise InputError(f"render must be between 1 and {MAX_RENDER}, got {self.render}.")
        if self.beam not in SIM_BEAMS:
            raise InputError(f"Simulation supports the beams {', '.join(SIM_BEAMS)}, got "
                             f"{self.beam!r}.")
        if self.views > 1 and self.arc is not None and not self.arc >= MIN_ARC_DEGREES:
            # the scan reader refuses smaller arcs (angles in radians labelled degrees)
            raise InputError(f"The arc must be at least {MIN_ARC_DEGREES:g} degrees, got "
                             f"{self.arc:g}.")

    def geometry(self) -> Geometry:
        """The scanner geometry of the simulation."""
        arc = self.arc if self.arc is not None else (180.0 if self.beam == "parallel" else 360.0)
        return default_geometry(self.size, beam=self.beam, views=self.views, arc_degrees=arc,
                                det_count=self.det_count)


def simulate(config: SimulationConfig = SimulationConfig()) -> Scan:
    """The scan that `config` describes, reproducible from its seed."""
    from ctbayes.phantoms import make_phantom

    image = make_phantom(config.phantom, config.size * config.render, config.seed)
    return simulate_scan(image, config.geometry(), noise=config.noise,
                         noise_level=config.noise_level, photons=config.photons,
                         seed=config.seed, supersample=config.supersample)
