"""Data Exchange (DXchange) HDF5 raw projections -> one 2D parallel-beam slice.

Layout read: `/exchange/data` (views, rows, cols) raw counts, `/exchange/data_white` and
optional `/exchange/data_dark` (frames, rows, cols), `/exchange/theta` (views,) in degrees.
One detector row is normalised with the mean flat and dark fields, log-transformed, and
shifted so that the rotation axis sits at the detector centre, which the Geometry assumes.
The file has no physical sizes: detector spacing and pixel size are 1 (one detector column).
"""

from __future__ import annotations

import dataclasses
import math

import h5py
import numpy as np
from scipy import ndimage

from ctbayes.errors import InputError
from ctbayes.geometry import Geometry
from ctbayes.io.hdf5 import line_integrals, lookup
from ctbayes.io.inputs import check_angles_degrees, check_input_file
from ctbayes.io.reduce import bin_detector, regrid, subsample_views
from ctbayes.scan import Scan

DATA, WHITE, DARK, THETA = "exchange/data", "exchange/data_white", "exchange/data_dark", "exchange/theta"


def estimate_rotation_center(sinogram, angles_rad) -> float:
    """The detector column (0-based, sub-pixel) of the rotation axis of a parallel-beam scan.

    1. Centre of mass: in parallel beam each view's centre of mass is the projection of the
       object's, c(theta) = c0 + a cos(theta) + b sin(theta). After subtracting each view's
       baseline (median of its outer 2% columns) the per-view centres are fitted by least
       squares, views off by more than three robust standard deviations are dropped and the
       fit repeated. This needs the object inside the field of view and is biased by a
       background that is not flat, so it serves as the start (and the answer for scans
       shorter than a half-turn).
    2. Mirror consistency (after Vo et al., Opt. Express 22, 2014): for a half-turn of views,
       p(theta + pi, s) = p(theta, 2 c - s). Stitching the half-turn with its mirror about a
       candidate c gives a full-turn sinogram whose 2D spectrum has no energy in the wedge
       |detector frequency| < |angular harmonic| / (pi * det_count) only when c is right. The
       mean spectral magnitude there is minimised first over whole columns within
       max(8, det_count/16) of the start, then in 0.1-column steps around the best one
       (band-limited Fourier shifts, which unlike interpolation do not smooth the mirror),
       and a parabola through the three best steps gives the answer.
    """
    sino = np.asarray(sinogram, dtype=np.float64)
    theta = np.ravel(np.asarray(angles_rad, dtype=np.float64))
    if sino.ndim != 2 or sino.shape[0] != theta.size:
        raise InputError(
            f"The rotation-centre estimate needs a (views, detector) sinogram with one angle per "
            f"view, got shape {sino.shape} and {theta.size} angles."
        )
    if not (np.all(np.isfinite(sino)) and np.all(np.isfinite(theta))):
        raise InputError("The rotation-centre estimate needs finite sinogram values and angles.")
    start = _center_of_mass_fit(sino, theta)
    half = _half_turn(sino, theta)
    if half is None:
        return start
    det = sino.shape[1]
    reach = max(8, det // 16)
    coarse = np.arange(round(start) - reach, round(start) + reach + 1)
    coarse = coarse[(coarse >= 0) & (coarse <= det - 1)]
    best = coarse[np.argmin([_mirror_misfit(half, _mirror_exact(half, c)) for c in coarse])]
    fine = best + np.arange(-10, 11) / 10
    misfit = np.array([_mirror_misfit(half, _mirror_shifted(half, c)) for c in fine])
    i = int(np.clip(np.argmin(misfit), 1, len(fine) - 2))
    left, mid, right = misfit[i - 1:i + 2]
    curvature = left - 2 * mid + right
    offset = 0.05 * (left - right) / curvature if curvature > 0 else 0.0
    return float(np.clip(fine[i] + offset, 0, det - 1))


def _center_of_mass_fit(sino, theta) -> float:
    """Step 1 of estimate_rotation_center: c0 of the sinusoid fitted to the centres of mass."""
    views, det = sino.shape
    edge = max(1, det // 50)
    baseline = np.median(np.concatenate([sino[:, :edge], sino[:, -edge:]], axis=1), axis=1)
    profile = sino - baseline[:, None]
    mass = profile.sum(axis=1)
    used = mass > 0.05 * np.median(np.abs(mass)) if np.any(mass > 0) else np.zeros(views, bool)
    design = np.stack([np.ones(views), np.cos(theta), np.sin(theta)], axis=1)
    if used.sum() < 3 or np.linalg.cond(design[used]) > 1e6:
        raise InputError(
            "The rotation-centre estimate needs at least 3 non-empty views spread over an arc of "
            "angles; pass the centre explicitly instead."
        )
    com = np.zeros(views)
    com[used] = (profile[used] @ np.arange(det)) / mass[used]
    for _ in range(2):
        coef = np.linalg.lstsq(design[used], com[used], rcond=None)[0]
        residual = np.abs(com - design @ coef)
        inliers = used & (residual <= max(3 * 1.4826 * np.median(residual[used]), 0.5))
        if inliers.sum() < 3 or inliers.sum() == used.sum():
            break
        used = inliers
    return float(np.clip(coef[0], 0, det - 1))


def _half_turn(sino, theta):
    """The views of the first half-turn in angle order, or None if they do not cover it."""
    order = np.argsort(theta)
    a = theta[order]
    if a.size < 4:
        return None
    step = float(np.median(np.diff(a)))
    keep = a < a[0] + np.pi - step / 2
    if step <= 0 or a[keep][-1] - a[0] + step < np.pi - 1.5 * step:
        return None
    return sino[order[keep]]


def _mirror_exact(sino, center):
    """p(2 center - s) for a whole or half column `center`, by indexing (edges repeated)."""
    det = sino.shape[1]
    return sino[:, np.clip(np.round(2 * center - np.arange(det)).astype(int), 0, det - 1)]


def _mirror_shifted(sino, center):
    """p(2 center - s) for any `center`, by a band-limited Fourier shift of the flipped rows."""
    det = sino.shape[1]
    pad = det // 2
    flipped = np.pad(sino[:, ::-1], ((0, 0), (pad, pad)), mode="edge")
    freq = np.fft.rfftfreq(flipped.shape[1])
    phase = np.exp(-2j * np.pi * freq * (2 * center - (det - 1)))
    shifted = np.fft.irfft(np.fft.rfft(flipped, axis=1) * phase, n=flipped.shape[1], axis=1)
    return shifted[:, pad:pad + det]


def _mirror_misfit(half, mirror):
    """Mean spectral magnitude of [half; mirror] in the wedge a consistent sinogram leaves empty."""
    rows, det = 2 * half.shape[0], half.shape[1]
    low = min(det // 2 + 1, int(np.ceil(rows / (2 * np.pi))) + 1)  # the wedge's columns
    spectrum = np.abs(np.fft.fft(np.fft.rfft(np.vstack([half, mirror]), axis=1)[:, :low], axis=0))
    harmonic = np.abs(np.fft.fftfreq(rows) * rows)[:, None]
    freq = np.fft.rfftfreq(det)[None, :low]
    wedge = (freq < harmonic / (np.pi * det)) & (harmonic >= 3)
    return float(spectrum[wedge].mean())


def center_sinogram(sinogram, center: float) -> np.ndarray:
    """Shift (linear interpolation, edge values repeated) the axis at `center` to the middle."""
    sino = np.asarray(sinogram, dtype=np.float64)
    shift = (sino.shape[-1] - 1) / 2 - center
    return ndimage.shift(sino, (0, shift), order=1, mode="nearest")


def import_dxchange(path, *, row: int | None = None, center: float | None = None, every: int = 1,
                    angle_range=None, binning: int = 1, image_size: int | None = None) -> Scan:
    """Import one detector row of a DXchange file as a centred 2D parallel-beam scan.

    row: detector row (default: the middle one). center: rotation-axis column (0-based) in
    the file's detector pixels (default: estimate_rotation_center on all views). After the
    axis is shifted to the detector centre (linear interpolation, no cropping), views
    are subsampled (every, angle_range in degrees), the detector binned, and the image set to
    image_size pixels across the detector's width (default: the binned detector count, i.e.
    pixel size = detector spacing).
    """
    path = check_input_file(path, "a Data Exchange HDF5 file")
    where = str(path)
    if not h5py.is_hdf5(path):
        raise InputError(f"{path}: not an HDF5 file; expected a Data Exchange HDF5 file.")
    try:
        with h5py.File(path, "r") as f:
            counts, flat, dark, theta = _read_row(f, row, where)
    except InputError:
        raise
    except (OSError, KeyError, RuntimeError) as err:
        raise InputError(f"{path}: the HDF5 file is truncated or corrupt ({err}).") from None
    sinogram = line_integrals(counts, flat, dark, where)
    det_count = sinogram.shape[1]
    estimated = center is None
    if center is None:
        try:
            center = estimate_rotation_center(sinogram, np.radians(theta))
        except InputError as err:
            raise InputError(f"{path}: {err}") from None
    else:
        try:
            value = float(center)
        except (TypeError, ValueError):
            value = math.nan
        if not 0 <= value <= det_count - 1:
            raise InputError(
                f"{path}: the rotation centre must be a detector column in 0..{det_count - 1}, "
                f"got {center!r}."
            )
        center = value
    geometry = Geometry(beam="parallel", angles=np.radians(theta), det_count=det_count,
                        image_shape=(det_count, det_count))
    scan = Scan(sinogram=center_sinogram(sinogram, center), geometry=geometry, source=where,
                provenance={"rotation_center": float(center),
                            "rotation_center_source": "estimated" if estimated else "given",
                            "rotation_center_unit": "detector column of the source file, 0-based"})
    scan = bin_detector(subsample_views(scan, every=every, angle_range=angle_range), binning)
    if image_size is None:
        binned = scan.geometry
        return dataclasses.replace(scan, geometry=binned.with_image(
            (binned.det_count, binned.det_count), pixel_size=binned.det_spacing))
    return regrid(scan, image_size)


def _dataset(f, name: str, where: str, ndim: int, required: bool = True):
    obj = lookup(f, name, where)
    if obj is None:
        if required:
            raise InputError(f"{where}: missing dataset /{name}; expected a Data Exchange file.")
        return None
    if not isinstance(obj, h5py.Dataset) or obj.dtype.kind not in "fiu" or obj.ndim != ndim:
        shape = getattr(obj, "shape", "a group")
        raise InputError(
            f"{where}: /{name} is {shape} of {getattr(obj, 'dtype', 'no type')}, expected a "
            f"{ndim}D numeric dataset."
        )
    return obj


def _read_row(f, row, where):
    """Counts, mean flat, mean dark (views or frames, cols) of one row, and theta in degrees."""
    data = _dataset(f, DATA, where, 3)
    white = _dataset(f, WHITE, where, 3)
    dark = _dataset(f, DARK, where, 3, required=False)
    theta = np.asarray(_dataset(f, THETA, where, 1)[()], dtype=np.float64)
    views, rows, cols = data.shape
    if views == 0 or rows == 0 or cols == 0:
        raise InputError(f"{where}: /{DATA} has shape {data.shape}, expected no empty axis.")
    if cols < 2:
        raise InputError(f"{where}: /{DATA} has shape {data.shape}: {cols} detector column, but "
                         "a reconstruction needs at least 2.")
    for name, frames in ((WHITE, white), (DARK, dark)):
        if frames is not None and (frames.shape[0] == 0 or frames.shape[1:] != (rows, cols)):
            raise InputError(
                f"{where}: /{name} has shape {frames.shape}, expected (frames, {rows}, {cols}) "
                f"like /{DATA}."
            )
    if theta.size != views:
        raise InputError(f"{where}: /{THETA} has {theta.size} angles but /{DATA} has {views} views.")
    if row is None:
        row = rows // 2
    if isinstance(row, bool) or not isinstance(row, (int, np.integer)) or not 0 <= row < rows:
        raise InputError(f"{where}: row must be a detector row in 0..{rows - 1}, got {row!r}.")
    counts = np.asarray(data[:, row, :], dtype=np.float64)
    flat = np.asarray(white[:, row, :], dtype=np.float64).mean(axis=0)
    dark_mean = np.zeros(cols) if dark is None else np.asarray(dark[:, row, :], np.float64).mean(axis=0)
    for name, values in ((DATA, counts), (WHITE, flat), (DARK, dark_mean)):
        if not np.all(np.isfinite(values)):
            raise InputError(f"{where}: /{name} contains NaN or infinite values.")
    return counts, flat, dark_mean, check_angles_degrees(theta, where, f"/{THETA}")
