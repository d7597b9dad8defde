"""Reductions a user applies to any scan: fewer views, coarser detector, another image grid.

Each function returns a new Scan (the input is left untouched) and checks its arguments,
raising InputError with one sentence that names the scan and the bad setting.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np
from skimage.transform import resize

from ctbayes.errors import InputError
from ctbayes.scan import Scan

_ANGLE_TOL_DEG = 1e-6  # degrees -> radians -> degrees does not round-trip exactly


def _where(scan: Scan) -> str:
    return f"{scan.source}: " if scan.source != "<memory>" else ""


def _positive_int(scan: Scan, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InputError(f"{_where(scan)}{name} must be a whole number >= 1, got {value!r}.")
    return int(value)


def subsample_views(scan: Scan, every: int = 1, angle_range=None) -> Scan:
    """Keep the views whose angle lies in angle_range, then every `every`-th of those.

    angle_range: (start_deg, stop_deg), half-open [start, stop) in degrees, compared with the
    scan's angles as stored (no wrapping modulo 360). None keeps all angles.
    """
    every = _positive_int(scan, "every", every)
    keep = np.arange(scan.geometry.num_views)
    if angle_range is not None:
        try:
            start, stop = (float(v) for v in angle_range)
        except (TypeError, ValueError):
            raise InputError(
                f"{_where(scan)}angle_range must be two numbers (start_deg, stop_deg), "
                f"got {angle_range!r}."
            ) from None
        if not (math.isfinite(start) and math.isfinite(stop) and start < stop):
            raise InputError(
                f"{_where(scan)}angle_range must be finite with start < stop, got ({start:g}, {stop:g})."
            )
        deg = np.degrees(scan.geometry.angles_array)
        keep = keep[(deg >= start - _ANGLE_TOL_DEG) & (deg < stop - _ANGLE_TOL_DEG)]
        if keep.size == 0:
            raise InputError(
                f"{_where(scan)}no view has an angle in [{start:g}, {stop:g}) degrees; the scan "
                f"covers {deg.min():.2f} to {deg.max():.2f} degrees."
            )
    keep = keep[::every]
    if keep.size == scan.geometry.num_views:
        return scan
    return scan.subset(keep)


def bin_detector(scan: Scan, factor: int) -> Scan:
    """Average groups of `factor` adjacent detector pixels; det_spacing grows by `factor`.

    When det_count is not a multiple of `factor`, the remainder is dropped symmetrically:
    remainder // 2 pixels at the start, the rest at the end, so the detector stays centred
    (an odd remainder moves the centre by half an original pixel). Averaging keeps the
    line integrals' scale. 3D scans are binned along the columns only.
    """
    factor = _positive_int(scan, "binning", factor)
    g = scan.geometry
    if factor == 1:
        return scan
    if factor > g.det_count:
        raise InputError(
            f"{_where(scan)}binning {factor} exceeds the {g.det_count} detector pixels."
        )
    count = g.det_count // factor
    start = (g.det_count - count * factor) // 2
    kept = scan.sinogram[..., start:start + count * factor]
    binned = kept.reshape(kept.shape[:-1] + (count, factor)).mean(axis=-1)
    geometry = dataclasses.replace(
        g, det_count=count, det_spacing=g.det_spacing * factor,
        det_row_spacing=g.row_spacing if g.is_3d else g.det_row_spacing,
    )
    return dataclasses.replace(scan, sinogram=binned, geometry=geometry)


def _resize(image: np.ndarray, size: int, binary: bool) -> np.ndarray:
    """Resize with linear interpolation, anti-aliased when shrinking; masks stay 0/1."""
    out = resize(image.astype(np.float64), (size, size), order=1, mode="edge",
                 anti_aliasing=size < max(image.shape), preserve_range=True)
    return (out >= 0.5).astype(np.float32) if binary else out.astype(np.float32)


def regrid(scan: Scan, image_size: int) -> Scan:
    """The same field of view on a square image of image_size pixels (2D scans).

    The pixel size scales with the width (cols) of the old grid. The ground truth and the
    reference images are resized with linear interpolation (anti-aliased when shrinking);
    a reference whose values are all 0 or 1 (a mask or segmentation) is thresholded at 0.5
    after resizing so that it stays binary.
    """
    size = _positive_int(scan, "image_size", image_size)
    g = scan.geometry
    if g.is_3d:
        raise InputError(f"{_where(scan)}regridding is available for 2D scans only.")
    if g.image_shape == (size, size):
        return scan
    truth = None if scan.ground_truth is None else _resize(scan.ground_truth, size, False)
    refs = {name: _resize(img, size, bool(np.isin(img, (0, 1)).all()))
            for name, img in scan.references.items()}
    return dataclasses.replace(scan, geometry=g.with_image((size, size)), ground_truth=truth,
                               references=refs)
