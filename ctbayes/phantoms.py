"""Test images: the modified Shepp-Logan head and random ellipses or rectangles.

Every phantom is a float32 (size, size) image in ASTRA layout (row 0 at the top, column
index growing with x), with values in [0, 1] and zero outside the inscribed circle, so that
every view of a detector that covers the image sees the whole object. Shapes are described
on the square [-1, 1]^2 (y up) and rendered with OVERSAMPLE^2 sub-pixel samples per pixel,
which gives partial-volume edges instead of staircases.
"""

from __future__ import annotations

import numbers

import numpy as np

from ctbayes.errors import InputError

PHANTOMS = ("shepp-logan", "ellipses", "rectangles")
OVERSAMPLE = 4
MIN_SIZE = 4
SHAPE_RADIUS = 0.9  # random shapes lie inside this disk, a margin within the inscribed circle

# Modified Shepp-Logan (Toft 1996): value, semi-axis along x, along y, centre x, centre y,
# rotation (degrees, counter-clockwise), on [-1, 1]^2 with y up.
_SHEPP_LOGAN = np.array([
    [1.0, 0.69, 0.92, 0.0, 0.0, 0.0],
    [-0.8, 0.6624, 0.8740, 0.0, -0.0184, 0.0],
    [-0.2, 0.1100, 0.3100, 0.22, 0.0, -18.0],
    [-0.2, 0.1600, 0.4100, -0.22, 0.0, 18.0],
    [0.1, 0.2100, 0.2500, 0.0, 0.35, 0.0],
    [0.1, 0.0460, 0.0460, 0.0, 0.1, 0.0],
    [0.1, 0.0460, 0.0460, 0.0, -0.1, 0.0],
    [0.1, 0.0460, 0.0230, -0.08, -0.605, 0.0],
    [0.1, 0.0230, 0.0230, 0.0, -0.606, 0.0],
    [0.1, 0.0230, 0.0460, 0.06, -0.605, 0.0],
])


def shepp_logan(size: int) -> np.ndarray:
    """The modified Shepp-Logan phantom, upright as usually displayed: row 0 is above the head.

    Values: skull 1, brain 0.2, ventricles ("eyes", left and right of centre) 0, small
    features 0.3; the larger ventricle is on the left, the three small ellipses at the bottom.
    """
    _check_size(size)
    shapes = _SHEPP_LOGAN.copy()
    shapes[:, 5] = np.radians(shapes[:, 5])
    return _render(size, _ellipse, shapes)


def random_ellipses(size: int, seed: int, count: int = 12) -> np.ndarray:
    """`count` random ellipses added together, scaled to a maximum of 1.

    After the ellipses data set of Adler & Oktem (used by Barbano et al.): semi-axes
    0.2 * Exponential(1) clipped to [0.03, 0.6], random orientation, values U(0.1, 1); each
    ellipse lies inside the disk of radius SHAPE_RADIUS.
    """
    _check_size(size)
    _check_count(count)
    rng = _rng(seed)
    axes = np.clip(0.2 * rng.exponential(1.0, (count, 2)), 0.03, 0.6)
    values = rng.uniform(0.1, 1.0, count)
    rotation = rng.uniform(0.0, np.pi, count)
    centres = _centres_in_disk(rng, SHAPE_RADIUS - axes.max(axis=1))
    shapes = np.column_stack([values, axes, centres, rotation])
    return _normalise(_render(size, _ellipse, shapes))


def random_rectangles(size: int, seed: int, count: int = 3) -> np.ndarray:
    """`count` random rectangles added together, scaled to a maximum of 1.

    After the rectangles data set of Barbano et al. (Bayesian experimental design with the
    linearised deep image prior): values U(0.5, 1), half-sides U(0.1, 0.45), orientations
    drawn around one common random angle (Gaussian, sigma 0.05 rad), so the rectangles share
    roughly one direction, which makes some views more informative than others. Each
    rectangle lies inside the disk of radius SHAPE_RADIUS.
    """
    _check_size(size)
    _check_count(count)
    rng = _rng(seed)
    values = rng.uniform(0.5, 1.0, count)
    half_sides = rng.uniform(0.1, 0.45, (count, 2))
    rotation = rng.normal(rng.uniform(0.0, np.pi), 0.05, count)
    centres = _centres_in_disk(rng, SHAPE_RADIUS - np.hypot(half_sides[:, 0], half_sides[:, 1]))
    shapes = np.column_stack([values, half_sides, centres, rotation])
    return _normalise(_render(size, _rectangle, shapes))


def make_phantom(name: str, size: int, seed: int = 0) -> np.ndarray:
    """The phantom called `name` (one of PHANTOMS); Shepp-Logan ignores the seed."""
    if name == "shepp-logan":
        return shepp_logan(size)
    if name == "ellipses":
        return random_ellipses(size, seed)
    if name == "rectangles":
        return random_rectangles(size, seed)
    raise InputError(f"Unknown phantom {name!r}; expected one of {', '.join(PHANTOMS)}.")


# -- rendering ----------------------------------------------------------------------------
def _ellipse(x, y, a, b, cx, cy, theta):
    """Indicator of an ellipse with semi-axes a (along x before rotation) and b."""
    c, s = np.cos(theta), np.sin(theta)
    u = (x - cx) * c + (y - cy) * s
    v = (y - cy) * c - (x - cx) * s
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _rectangle(x, y, a, b, cx, cy, theta):
    """Indicator of a rectangle with half-sides a (along x before rotation) and b."""
    c, s = np.cos(theta), np.sin(theta)
    u = (x - cx) * c + (y - cy) * s
    v = (y - cy) * c - (x - cx) * s
    return (np.abs(u) <= a) & (np.abs(v) <= b)


def _render(size, indicator, shapes) -> np.ndarray:
    """Sum of value * indicator over shapes (rows: value, a, b, cx, cy, theta), pixel-averaged.

    Loops run over sub-pixel offsets and shapes only; each step is vectorised over the image.
    """
    centres = np.arange(size) + 0.5
    offsets = (np.arange(OVERSAMPLE) + 0.5) / OVERSAMPLE - 0.5
    image = np.zeros((size, size))
    for dy in offsets:
        y = (1.0 - 2.0 * (centres + dy) / size)[:, None]
        for dx in offsets:
            x = (2.0 * (centres + dx) / size - 1.0)[None, :]
            for value, *params in shapes:
                image += value * indicator(x, y, *params)
    image /= OVERSAMPLE ** 2
    x = 2.0 * centres / size - 1.0
    inside = x[None, :] ** 2 + x[:, None] ** 2 <= 1.0
    return np.clip(np.where(inside, image, 0.0), 0.0, 1.0).astype(np.float32)


def _centres_in_disk(rng, radii) -> np.ndarray:
    """One uniformly distributed point in each disk of the given radii, as (n, 2) x, y."""
    r = radii * np.sqrt(rng.uniform(0.0, 1.0, len(radii)))
    phi = rng.uniform(0.0, 2 * np.pi, len(radii))
    return np.column_stack([r * np.cos(phi), r * np.sin(phi)])


def _normalise(image) -> np.ndarray:
    peak = image.max()
    return image / peak if peak > 0 else image


def _rng(seed) -> np.random.Generator:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise InputError(f"The random seed must be a non-negative integer, got {seed!r}.")
    return np.random.default_rng(int(seed))


def _check_size(size):
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < MIN_SIZE:
        raise InputError(
            f"The phantom size must be an integer of at least {MIN_SIZE} pixels, got {size!r}."
        )


def _check_count(count):
    if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 1:
        raise InputError(f"The number of shapes must be a positive integer, got {count!r}.")
