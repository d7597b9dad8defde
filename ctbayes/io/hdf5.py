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

import warnings
from pathlib import Path

import h5py
import numpy as np

from ctbayes.errors import DataWarning, InputError
from ctbayes.geometry import BEAMS, Geometry
from ctbayes.io.atomic import atomic_path
from ctbayes.io.formats import NXTOMO, NXTOMO_DATA, scan_format
from ctbayes.io.inputs import check_angles_degrees, check_input_file
from ctbayes.scan import Scan

DATA = NXTOMO_DATA
IMAGE_KEY = "entry/instrument/detector/image_key"
PIXEL_SIZE = "entry/instrument/detector/x_pixel_size"
ANGLES = "entry/sample/rotation_angle"
GROUP = "entry/ctbayes"
PROVENANCE = "entry/ctbayes/provenance"  # attributes: how the scan was made (e.g. by an import)
MIN_TRANSMISSION = 1e-6  # measured transmissions are clipped to this, so that -log stays finite


def read_scan(path) -> Scan:
    """Load a scan file, validating every field; bad input raises InputError."""
    path = check_input_file(path, "an HDF5 scan file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty, expected an HDF5 scan file.")
    if not h5py.is_hdf5(path):
        _refuse_importable(path)
        raise InputError(f"{path}: not an HDF5 file (expected an NXtomo scan file).")
    try:
        with h5py.File(path, "r") as f:
            if lookup(f, DATA, str(path)) is not None:
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


def lookup(f, name, where):
    """The object at /name, None where absent; InputError for a link that leads nowhere (a
    soft link to a missing object, an external link to a file that cannot be opened)."""
    node, parts = f, name.split("/")
    for i, part in enumerate(parts):
        here = "/".join(parts[:i + 1])
        if not isinstance(node, h5py.Group):
            return None
        link = node.get(part, getlink=True)
        if link is None:
            return None
        try:
            node = node[part]
        except (KeyError, OSError, RuntimeError):
            if isinstance(link, h5py.ExternalLink):
                raise InputError(f"{where}: /{here} is an external link to {link.path} in "
                                 f"{link.filename}, which cannot be opened.") from None
            if isinstance(link, h5py.SoftLink):
                raise InputError(f"{where}: /{here} is a soft link to {link.path}, which does "
                                 "not exist.") from None
            raise
    return node


def _dataset(f, name, where, required=True):
    obj = lookup(f, name, where)
    if obj is None:
        if required:
            raise InputError(f"{where}: missing dataset /{name}.")
        return None
    if not isinstance(obj, h5py.Dataset):
        raise InputError(f"{where}: /{name} is a group, expected a dataset.")
    if obj.dtype.kind not in "fiub":
        raise InputError(f"{where}: /{name} has type {obj.dtype}, expected numbers.")
    return obj[()]


def _attr(group, name, default=None, kind=float, where=""):
    """Attribute `name` of `group` as `kind` (float, str, or tuple of ints); InputError naming
    the file and attribute when it holds something else."""
    if group is None or name not in group.attrs:
        return default
    try:
        value = group.attrs[name]
    except (OSError, RuntimeError, TypeError) as err:
        raise InputError(f"{where}: the attribute {name} of /{GROUP} cannot be read ({err}).") from None
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if kind is str:
        return str(value)
    try:
        array = np.asarray(value)
        if kind is tuple:
            if array.dtype.kind not in "iu" and not (array.dtype.kind == "f"
                                                      and np.all(np.isfinite(array))
                                                      and np.all(array == np.round(array))):
                raise TypeError
            return tuple(int(v) for v in np.ravel(array))
        if array.size != 1 or array.dtype.kind not in "fiu":
            raise TypeError
        return kind(array.ravel()[0])
    except (TypeError, ValueError, OverflowError):
        expected = "whole numbers" if kind is tuple else "one number"
        shown = repr(value) if np.size(value) <= 6 else f"an array of shape {np.shape(value)}"
        raise InputError(f"{where}: the attribute {name} of /{GROUP} is {shown}, expected "
                         f"{expected}.") from None


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
    if data.ndim > 1 and data.shape[-1] < 2:
        raise InputError(f"{where}: /{DATA} has shape {data.shape}: {data.shape[-1]} detector "
                         "column, but a reconstruction needs at least 2.")
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
    angles_deg = check_angles_degrees(angles_deg, where, f"/{ANGLES}")

    group = f.get(GROUP)
    if group is not None and not isinstance(group, h5py.Group):
        raise InputError(f"{where}: /{GROUP} is not a group.")
    default_beam = "parallel" if data.ndim == 2 else "parallel3d"
    beam = _attr(group, "beam", default_beam, str, where)
    if beam not in BEAMS:
        raise InputError(f"{where}: unknown beam type {beam!r} in /{GROUP}; expected one of {', '.join(BEAMS)}.")
    expected_ndim = 3 if beam in ("parallel3d", "cone") else 2
    if data.ndim != expected_ndim:
        raise InputError(
            f"{where}: a {beam} scan needs {expected_ndim}D detector data, but /{DATA} has shape {data.shape}."
        )
    nxtomo_spacing = _dataset(f, PIXEL_SIZE, where, required=False)
    if nxtomo_spacing is not None and np.size(nxtomo_spacing) != 1:
        raise InputError(f"{where}: /{PIXEL_SIZE} has shape {np.shape(nxtomo_spacing)}, "
                         "expected one number.")
    det_spacing = _attr(group, "det_spacing",
                        float(np.ravel(nxtomo_spacing)[0]) if nxtomo_spacing is not None else 1.0,
                        where=where)
    det_count = data.shape[-1]
    default_shape = (det_count, det_count) if data.ndim == 2 else (data.shape[1], det_count, det_count)
    try:
        geometry = Geometry(
            beam=beam,
            angles=np.radians(angles_deg),
            det_count=det_count,
            image_shape=_attr(group, "image_shape", default_shape, tuple, where),
            det_spacing=det_spacing,
            pixel_size=_attr(group, "pixel_size", det_spacing, where=where),
            source_origin=_attr(group, "source_origin", where=where),
            origin_detector=_attr(group, "origin_detector", where=where),
            det_rows=data.shape[1] if data.ndim == 3 else None,
            det_row_spacing=_attr(group, "det_row_spacing", where=where),
        )
    except InputError as err:
        raise InputError(f"{where}: {err}") from None
    ground_truth = None
    references = {}
    provenance = {}
    if group is not None:
        ground_truth = _dataset(f, f"{GROUP}/ground_truth", where, required=False)
        refs = lookup(f, f"{GROUP}/references", where)
        if refs is not None:
            if not isinstance(refs, h5py.Group):
                raise InputError(f"{where}: /{GROUP}/references is not a group.")
            references = {name: _dataset(f, f"{GROUP}/references/{name}", where) for name in refs}
        notes = lookup(f, PROVENANCE, where)
        if isinstance(notes, h5py.Group):
            provenance = {k: (v.decode(errors="replace") if isinstance(v, bytes) else
                              v.item() if np.ndim(v) == 0 and hasattr(v, "item") else v)
                          for k, v in notes.attrs.items()}
    with np.errstate(over="ignore"):  # values beyond float32 become inf, which Scan refuses
        sinogram = data.astype(np.float32)
    return Scan(
        sinogram=sinogram,
        geometry=geometry,
        ground_truth=ground_truth,
        noise_std=_attr(group, "noise_std", where=where),
        references=references,
        source=where,
        provenance=provenance,
    )


def normalise_counts(data, keys, angles_deg, where):
    """Flat/dark-correct raw counts and take -log: returns line integrals and their angles."""
    proj, flat, dark = (keys == 0), (keys == 1), (keys == 2)
    if not proj.any():
        raise InputError(f"{where}: /{IMAGE_KEY} marks no projections (key 0).")
    if not flat.any():
        raise InputError(f"{where}: /{IMAGE_KEY} marks darks but no flat fields (key 1); raw counts need both.")
    for name, frames in (("projections", proj), ("flat fields", flat), ("dark fields", dark)):
        if frames.any() and not np.all(np.isfinite(data[frames])):
            raise InputError(f"{where}: the {name} in /{DATA} contain NaN or infinite values.")
    dark_mean = data[dark].mean(axis=0) if dark.any() else np.zeros(data.shape[1:])
    flat_mean = data[flat].mean(axis=0)
    return line_integrals(data[proj], flat_mean, dark_mean, where), angles_deg[proj]


def line_integrals(counts, flat, dark, where: str = "<memory>"):
    """-log((counts - dark) / (flat - dark)) of raw counts, checked for physics.

    A flat field not above the dark field (in any detector pixel) or a flat field with
    negative counts cannot be normalised: InputError naming `where`. Projection counts at or
    below the dark level (transmission <= MIN_TRANSMISSION) are clipped there so that the
    line integrals stay finite, and a DataWarning says how many values were clipped; every
    value clipped is an InputError.
    """
    counts = np.asarray(counts, np.float64)
    flat = np.asarray(flat, np.float64)
    dark = np.asarray(dark, np.float64)
    name = "the raw counts" if where == "<memory>" else f"{where}: the raw counts"
    if np.any(flat < 0):
        raise InputError(f"{name} have a flat field with negative values (down to "
                         f"{flat.min():.4g}) in {int(np.sum(flat < 0))} of {flat.size} detector "
                         "pixels; raw counts cannot be negative.")
    span = flat - dark
    bad = ~(span > 0)
    if bad.any():
        raise InputError(f"{name} have a flat field that is not above the dark field in "
                         f"{int(bad.sum())} of {span.size} detector pixels (flat - dark down to "
                         f"{span.min():.4g}); the counts cannot be normalised.")
    transmission = (counts - dark) / span
    clipped = ~(transmission > MIN_TRANSMISSION)
    if clipped.all():
        raise InputError(f"{name} of every projection value are at or below the dark field; "
                         "the projections hold no transmitted signal.")
    if clipped.any():
        warnings.warn(f"{name} include {int(clipped.sum())} of {clipped.size} projection values "
                      f"at or below the dark field (down to {counts.min():.4g} counts), clipped "
                      f"to transmission {MIN_TRANSMISSION:g} (line integral "
                      f"{-np.log(MIN_TRANSMISSION):.4g}).", DataWarning, stacklevel=2)
    return -np.log(np.maximum(transmission, MIN_TRANSMISSION))


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
        if scan.provenance:
            group.create_group("provenance").attrs.update(scan.provenance)
    return path
