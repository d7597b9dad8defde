"""Scan files: NXtomo-compatible HDF5 with a `ctbayes` group for what NXtomo lacks.

Layout (2D; 3D adds a detector-row axis):

    /entry                              NXentry, definition = "NXtomo"
    /entry/instrument/detector/data     float32 (views, detector) or (views, rows, cols)
    /entry/instrument/detector/image_key  optional int (views,): 0 projection, 1 flat, 2 dark
    /entry/instrument/detector/x_pixel_size  optional detector spacing
    /entry/sample/rotation_angle        float (views,), degrees
    /entry/ctbayes                      attrs: beam, det_spacing, source_origin,
                                        origin_detector, image_shape, pixel_size,
                                        det_row_spacing, noise_std
    /entry/ctbayes/ground_truth         optional image
    /entry/ctbayes/references/<name>    optional reference images (not the truth)

A file with image keys holds raw counts: flats and darks are averaged and the projections
normalised and log-transformed on load. A plain NXtomo file without the ctbayes group is read
as parallel beam with a square image of side = detector count, pixel size = detector spacing.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from ctbayes.errors import InputError
from ctbayes.geometry import BEAMS, Geometry
from ctbayes.io.atomic import atomic_path
from ctbayes.io.formats import NXTOMO, NXTOMO_DATA, scan_format
from ctbayes.scan import Scan

DATA = NXTOMO_DATA
IMAGE_KEY = "entry/instrument/detector/image_key"
PIXEL_SIZE = "entry/instrument/detector/x_pixel_size"
ANGLES = "entry/sample/rotation_angle"
GROUP = "entry/ctbayes"


def read_scan(path) -> Scan:
    """Load a scan file, validating every field; bad input raises InputError."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file.")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected an HDF5 scan file.")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty, expected an HDF5 scan file.")
    if not h5py.is_hdf5(path):
        _refuse_importable(path)
        raise InputError(f"{path}: not an HDF5 file (expected an NXtomo scan file).")
    try:
        with h5py.File(path, "r") as f:
            if DATA in f:
                return _read(f, str(path))
    except InputError:
        raise
    except (OSError, KeyError, RuntimeError) as err:
        raise InputError(f"{path}: the HDF5 file is truncated or corrupt ({err}).") from None
    _refuse_importable(path)
    raise InputError(f"{path}: missing dataset /{DATA}.")


def _refuse_importable(path) -> None:
    """A file that `ctbayes import` converts (HTC2022 .mat, Data Exchange) is no scan yet."""
    try:
        kind = scan_format(path)
    except InputError:
        return
    if kind != NXTOMO:
        raise InputError(f"{path}: {kind}, not an NXtomo scan; convert it first with "
                         f"`ctbayes import {path} SCAN.h5`.")


def _dataset(f, name, where, required=True):
    if name not in f:
        if required:
            raise InputError(f"{where}: missing dataset /{name}.")
        return None
    obj = f[name]
    if not isinstance(obj, h5py.Dataset):
        raise InputError(f"{where}: /{name} is a group, expected a dataset.")
    if obj.dtype.kind not in "fiub":
        raise InputError(f"{where}: /{name} has type {obj.dtype}, expected numbers.")
    return obj[()]


def _attr(group, name, default=None, kind=float):
    if group is None or name not in group.attrs:
        return default
    value = group.attrs[name]
    if isinstance(value, bytes):
        value = value.decode()
    if kind is str:
        return str(value)
    if kind is tuple:
        return tuple(int(v) for v in np.ravel(value))
    return kind(value)


def _read(f, where) -> Scan:
    data = np.asarray(_dataset(f, DATA, where), dtype=np.float64)
    angles_deg = np.asarray(_dataset(f, ANGLES, where), dtype=np.float64)
    keys = _dataset(f, IMAGE_KEY, where, required=False)
    if data.size == 0:
        raise InputError(f"{where}: /{DATA} is empty.")
    if data.ndim not in (2, 3):
        raise InputError(
            f"{where}: /{DATA} has shape {data.shape}, expected (views, detector) or "
            f"(views, rows, cols)."
        )
    if angles_deg.ndim != 1:
        raise InputError(f"{where}: /{ANGLES} has shape {angles_deg.shape}, expected one angle per view.")
    if len(angles_deg) != data.shape[0]:
        raise InputError(
            f"{where}: /{ANGLES} has {len(angles_deg)} angles but /{DATA} has {data.shape[0]} views."
        )
    if keys is not None:
        keys = np.asarray(keys).ravel()
        if len(keys) != data.shape[0]:
            raise InputError(f"{where}: /{IMAGE_KEY} has {len(keys)} entries but /{DATA} has {data.shape[0]} frames.")
        if np.any(keys != 0):  # flats or darks present: the projections are raw counts
            data, angles_deg = normalise_counts(data, keys, angles_deg, where)
    if not np.all(np.isfinite(data)):
        raise InputError(f"{where}: /{DATA} contains NaN or infinite values.")
    if not np.all(np.isfinite(angles_deg)):
        raise InputError(f"{where}: /{ANGLES} contains NaN or infinite values.")

    group = f.get(GROUP)
    if group is not None and not isinstance(group, h5py.Group):
        raise InputError(f"{where}: /{GROUP} is not a group.")
    default_beam = "parallel" if data.ndim == 2 else "parallel3d"
    beam = _attr(group, "beam", default_beam, str)
    if beam not in BEAMS:
        raise InputError(f"{where}: unknown beam type {beam!r} in /{GROUP}; expected one of {', '.join(BEAMS)}.")
    expected_ndim = 3 if beam in ("parallel3d", "cone") else 2
    if data.ndim != expected_ndim:
        raise InputError(
            f"{where}: a {beam} scan needs {expected_ndim}D detector data, but /{DATA} has shape {data.shape}."
        )
    nxtomo_spacing = _dataset(f, PIXEL_SIZE, where, required=False)
    det_spacing = _attr(group, "det_spacing",
                        float(np.ravel(nxtomo_spacing)[0]) if nxtomo_spacing is not None else 1.0)
    det_count = data.shape[-1]
    default_shape = (det_count, det_count) if data.ndim == 2 else (data.shape[1], det_count, det_count)
    try:
        geometry = Geometry(
            beam=beam,
            angles=np.radians(angles_deg),
            det_count=det_count,
            image_shape=_attr(group, "image_shape", default_shape, tuple),
            det_spacing=det_spacing,
            pixel_size=_attr(group, "pixel_size", det_spacing),
            source_origin=_attr(group, "source_origin"),
            origin_detector=_attr(group, "origin_detector"),
            det_rows=data.shape[1] if data.ndim == 3 else None,
            det_row_spacing=_attr(group, "det_row_spacing"),
        )
    except InputError as err:
        raise InputError(f"{where}: {err}") from None
    ground_truth = None
    references = {}
    if group is not None:
        ground_truth = _dataset(f, f"{GROUP}/ground_truth", where, required=False)
        refs = group.get("references")
        if refs is not None:
            references = {name: _dataset(f, f"{GROUP}/references/{name}", where) for name in refs}
    return Scan(
        sinogram=data.astype(np.float32),
        geometry=geometry,
        ground_truth=ground_truth,
        noise_std=_attr(group, "noise_std"),
        references=references,
        source=where,
    )


def normalise_counts(data, keys, angles_deg, where):
    """Flat/dark-correct raw counts and take -log: returns line integrals and their angles."""
    proj, flat, dark = (keys == 0), (keys == 1), (keys == 2)
    if not proj.any():
        raise InputError(f"{where}: /{IMAGE_KEY} marks no projections (key 0).")
    if not flat.any():
        raise InputError(f"{where}: /{IMAGE_KEY} marks darks but no flat fields (key 1); raw counts need both.")
    dark_mean = data[dark].mean(axis=0) if dark.any() else np.zeros(data.shape[1:])
    flat_mean = data[flat].mean(axis=0)
    return line_integrals(data[proj], flat_mean, dark_mean), angles_deg[proj]


def line_integrals(counts, flat, dark):
    """-log((counts - dark) / (flat - dark)), clipped so that dead pixels stay finite."""
    span = np.maximum(flat - dark, 1e-6)
    transmission = np.clip((counts - dark) / span, 1e-6, None)
    return -np.log(transmission)


def write_scan(scan: Scan, path) -> Path:
    """Write a scan as NXtomo + ctbayes group, atomically."""
    path = Path(path)
    g = scan.geometry
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry["definition"] = "NXtomo"
        det = entry.create_group("instrument").create_group("detector")
        entry["instrument"].attrs["NX_class"] = "NXinstrument"
        det.attrs["NX_class"] = "NXdetector"
        det.create_dataset("data", data=scan.sinogram.astype(np.float32), compression="gzip")
        det["image_key"] = np.zeros(g.num_views, dtype=np.int32)
        det["x_pixel_size"] = g.det_spacing
        sample = entry.create_group("sample")
        sample.attrs["NX_class"] = "NXsample"
        sample["rotation_angle"] = np.degrees(g.angles_array)
        sample["rotation_angle"].attrs["units"] = "degree"
        group = entry.create_group("ctbayes")
        group.attrs["beam"] = g.beam
        group.attrs["det_spacing"] = g.det_spacing
        group.attrs["image_shape"] = np.asarray(g.image_shape, dtype=np.int64)
        group.attrs["pixel_size"] = g.pixel_size
        for name in ("source_origin", "origin_detector", "det_row_spacing"):
            if getattr(g, name) is not None:
                group.attrs[name] = getattr(g, name)
        if scan.noise_std is not None:
            group.attrs["noise_std"] = scan.noise_std
        if scan.ground_truth is not None:
            group.create_dataset("ground_truth", data=scan.ground_truth, compression="gzip")
        if scan.references:
            refs = group.create_group("references")
            for name, image in scan.references.items():
                refs.create_dataset(name, data=image, compression="gzip")
    return path
