"""Helsinki Tomography Challenge 2022 (HTC2022) .mat files: 2D fan-beam line integrals.

A measurement file holds a struct `CtDataFull` (or `CtDataLimited` for the challenge's
limited-angle data) with `sinogram` (views, detectors), already flat-field corrected and
log-transformed, and `parameters` (angles in degrees, distances in mm). The geometry is read
from `parameters`: ASTRA fanflat with detector pixel `pixelSizePost`, `numDetectorsPost`
pixels, source-origin `distanceSourceOrigin`, origin-detector `distanceSourceDetector -
distanceSourceOrigin`, and a 512x512 image of pixel `effectivePixelSizePost` (the detector
pixel at the object), the grid of the publisher's reference reconstructions.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import scipy.io

from ctbayes.errors import InputError
from ctbayes.geometry import Geometry
from ctbayes.io.inputs import check_angles_degrees, check_input_file
from ctbayes.io.reduce import bin_detector, regrid, subsample_views
from ctbayes.scan import Scan

STRUCTS = ("CtDataFull", "CtDataLimited")
IMAGE_SIZE = 512  # the publisher's reconstruction grid
REFERENCES = (("_recon_fbp", "reconFullFbp", "fbp"),
              ("_recon_fbp_seg", "reconFullFbpSeg", "segmentation"))


def import_htc2022(path, *, every: int = 1, angle_range=None, binning: int = 1,
                   image_size: int = IMAGE_SIZE, disc_truth: bool = False) -> Scan:
    """Import an HTC2022 measurement, with the publisher's FBP and segmentation if beside it.

    Sibling files `<stem>_recon_fbp.mat` (reconFullFbp) and `<stem>_recon_fbp_seg.mat`
    (reconFullFbpSeg) become references "fbp" and "segmentation"; there is no ground truth.
    For a full-data file, "fbp_noise" is a draw of that FBP's noise (`_reference_noise`), so
    that scores against the reference can allow for it (`uncertainty.reference_variance`).
    A last view that repeats the first angle (360 = 0 degrees) is dropped. Then views are
    subsampled (every, angle_range in degrees), the detector binned and the image regridded
    to image_size (see ctbayes.io.reduce).
    disc_truth: the object is a homogeneous disc (HTC2022 `solid_disc`): fit it to the whole
    measurement before any views are dropped (`ctbayes.disc.fit_disc`) and store it,
    rendered on the final image grid, as the ground truth.
    """
    path = Path(path)
    name, data = _struct(path)
    sinogram = _field(data, "sinogram", path, name)
    params = _field(data, "parameters", path, name)
    where = f"{name}.parameters"
    if not hasattr(params, "_fieldnames"):
        raise InputError(f"{path}: {where} is not a struct; expected the HTC2022 scan parameters.")
    angles_deg = check_angles_degrees(_number(params, "angles", path, where, array=True),
                                      str(path), f"{where}.angles")
    sinogram = np.asarray(sinogram)
    if sinogram.ndim != 2 or sinogram.dtype.kind not in "fiu":
        raise InputError(
            f"{path}: {name}.sinogram has shape {sinogram.shape} and type {sinogram.dtype}, "
            "expected a 2D numeric array (views, detectors)."
        )
    if len(angles_deg) != sinogram.shape[0]:
        raise InputError(
            f"{path}: {where}.angles has {len(angles_deg)} angles but {name}.sinogram has "
            f"{sinogram.shape[0]} views."
        )
    det_count = int(_number(params, "numDetectorsPost", path, where))
    if det_count != sinogram.shape[1]:
        raise InputError(
            f"{path}: {where}.numDetectorsPost is {det_count} but {name}.sinogram has "
            f"{sinogram.shape[1]} detector columns."
        )
    turn = (angles_deg[-1] - angles_deg[0]) % 360
    if len(angles_deg) > 1 and min(turn, 360 - turn) < 1e-6:
        angles_deg, sinogram = angles_deg[:-1], sinogram[:-1]
    source_origin = _number(params, "distanceSourceOrigin", path, where)
    source_detector = _number(params, "distanceSourceDetector", path, where)
    references = _references(path)
    try:
        geometry = Geometry(
            beam="fanflat",
            angles=np.radians(angles_deg),
            det_count=det_count,
            image_shape=(IMAGE_SIZE, IMAGE_SIZE),
            det_spacing=_number(params, "pixelSizePost", path, where),
            pixel_size=_number(params, "effectivePixelSizePost", path, where),
            source_origin=source_origin,
            origin_detector=source_detector - source_origin,
        )
        if name == "CtDataFull" and "fbp" in references:
            references["fbp_noise"] = _reference_noise(sinogram, geometry, references["fbp"])
        scan = Scan(sinogram=sinogram, geometry=geometry, references=references, source=str(path))
    except InputError as err:
        message = str(err)
        raise InputError(message if message.startswith(str(path)) else f"{path}: {message}") from None
    disc = _fit_disc(scan, path) if disc_truth else None
    scan = subsample_views(scan, every=every, angle_range=angle_range)
    scan = regrid(bin_detector(scan, binning), image_size)
    if disc is None:
        return scan
    from ctbayes.disc import render_disc

    return dataclasses.replace(scan, ground_truth=render_disc(disc, scan.geometry))


def _fit_disc(scan: Scan, path: Path):
    """The disc fitted to the full measurement; InputError where it is not a full scan."""
    from ctbayes.disc import fit_disc

    if scan.geometry.num_views < 3:
        raise InputError(f"{path}: a disc truth needs the full measurement, not "
                         f"{scan.geometry.num_views} views.")
    return fit_disc(scan.sinogram, scan.geometry).disc


def _reference_noise(sinogram, geometry: Geometry, reference) -> np.ndarray:
    """A draw of the publisher's FBP's noise (reference "fbp_noise"): that FBP is of this
    full measurement, so splitting its views measures its noise (`reference_noise_realisation`).
    Not for a limited-angle file, whose reference comes from other (the full) data. Of our
    filters Shepp-Logan comes closest to the publisher's FBP (inside the object at 512x512
    they are 0.53 of this noise std apart rms, Ram-Lak 0.73); at 128x128 the draws' std
    differ by 2%."""
    from ctbayes.operators.fbp import reference_noise_realisation

    return reference_noise_realisation(sinogram, geometry, reference,
                                       "Shepp-Logan").astype(np.float32)


def _load(path: Path, expected: str) -> dict:
    """scipy.io.loadmat with every failure turned into one InputError sentence."""
    check_input_file(path, expected)
    try:
        return scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
    except NotImplementedError:  # MATLAB v7.3 files are HDF5
        raise InputError(
            f"{path}: MATLAB v7.3 (HDF5) files are not supported; expected {expected} saved "
            "as MATLAB v5/v7 (save -v7)."
        ) from None
    except Exception as err:  # noqa: BLE001 - loadmat raises many types for non-MAT content
        raise InputError(f"{path}: not a readable MATLAB .mat file ({err}); expected {expected}.") from None


def _struct(path: Path):
    mat = _load(path, "an HTC2022 measurement file")
    for name in STRUCTS:
        if name in mat:
            return name, mat[name]
    found = ", ".join(k for k in mat if not k.startswith("__")) or "none"
    raise InputError(
        f"{path}: no CtDataFull or CtDataLimited struct (variables found: {found}); expected "
        "an HTC2022 measurement file."
    )


def _field(struct, field: str, path: Path, where: str):
    if not hasattr(struct, "_fieldnames") or field not in struct._fieldnames:
        raise InputError(f"{path}: {where} has no field {field!r}; expected an HTC2022 measurement struct.")
    return getattr(struct, field)


def _number(params, field: str, path: Path, where: str, array: bool = False):
    value = np.asarray(_field(params, field, path, where))
    if value.dtype.kind not in "fiu" or value.size == 0 or (value.size > 1 and not array) \
            or not np.all(np.isfinite(value)):
        raise InputError(
            f"{path}: {where}.{field} is {np.array2string(value, threshold=6)}, expected "
            f"{'finite numbers' if array else 'one finite number'}."
        )
    return value.astype(np.float64) if array else float(value)


def _references(path: Path) -> dict:
    """The publisher's reconstruction and segmentation from sibling files, where present."""
    refs = {}
    for suffix, variable, name in REFERENCES:
        sibling = path.with_name(path.stem + suffix + ".mat")
        if not sibling.exists():
            continue
        mat = _load(sibling, f"the HTC2022 reference image {variable}")
        image = np.asarray(mat.get(variable, np.empty(0)))
        if image.shape != (IMAGE_SIZE, IMAGE_SIZE) or image.dtype.kind not in "fiub":
            raise InputError(
                f"{sibling}: variable {variable} is missing or has shape {image.shape}, expected "
                f"a {IMAGE_SIZE}x{IMAGE_SIZE} numeric image."
            )
        refs[name] = image.astype(np.float32)
    return refs
