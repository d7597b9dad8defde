"""`import_scan`: recognise a foreign scan file by its content and turn it into a Scan."""

from __future__ import annotations

from pathlib import Path

import h5py

from ctbayes.errors import InputError
from ctbayes.io.dxchange import import_dxchange
from ctbayes.io.hdf5 import DATA as NXTOMO_DATA
from ctbayes.io.hdf5 import read_scan
from ctbayes.io.htc2022 import import_htc2022
from ctbayes.io.reduce import bin_detector, regrid, subsample_views
from ctbayes.scan import Scan

REDUCE_OPTIONS = ("every", "angle_range", "binning", "image_size")
OPTIONS = {
    "an HTC2022 .mat file": REDUCE_OPTIONS,
    "a Data Exchange HDF5 file": REDUCE_OPTIONS + ("row", "center"),
    "an NXtomo HDF5 file": REDUCE_OPTIONS,
}


def import_scan(src, **options) -> Scan:
    """Import an HTC2022 .mat, a Data Exchange HDF5 or an NXtomo HDF5 file as a Scan.

    The format is recognised by content (a MATLAB header or .mat suffix; /exchange/data;
    /entry/instrument/detector/data). options: every, angle_range (start_deg, stop_deg),
    binning, image_size for all formats; row and center for Data Exchange. An option given
    as None counts as not given; one the format does not take raises InputError.
    """
    path = Path(src)
    if not path.exists():
        raise InputError(f"{path}: no such file.")
    if not path.is_file():
        raise InputError(f"{path}: is not a file; expected a scan file.")
    kind = _kind(path)
    given = {name: value for name, value in options.items() if value is not None}
    unknown = sorted(set(options) - set(REDUCE_OPTIONS + ("row", "center")))
    if unknown:
        raise InputError(
            f"{path}: unknown import option {', '.join(unknown)}; the options are every, "
            "angle_range, binning, image_size, row and center."
        )
    unsupported = sorted(set(given) - set(OPTIONS[kind]))
    if unsupported:
        raise InputError(
            f"{path}: option {', '.join(unsupported)} does not apply to {kind}; it accepts "
            f"{', '.join(OPTIONS[kind])}."
        )
    if kind == "an HTC2022 .mat file":
        return import_htc2022(path, **given)
    if kind == "a Data Exchange HDF5 file":
        return import_dxchange(path, **given)
    scan = subsample_views(read_scan(path), given.get("every", 1), given.get("angle_range"))
    scan = bin_detector(scan, given.get("binning", 1))
    return regrid(scan, given["image_size"]) if "image_size" in given else scan


def _kind(path: Path) -> str:
    with open(path, "rb") as f:
        header = f.read(128)
    if path.suffix.lower() == ".mat" or header.startswith(b"MATLAB"):
        return "an HTC2022 .mat file"
    if h5py.is_hdf5(path):
        try:
            with h5py.File(path, "r") as f:
                if "exchange/data" in f:
                    return "a Data Exchange HDF5 file"
                if NXTOMO_DATA in f:
                    return "an NXtomo HDF5 file"
        except (OSError, KeyError, RuntimeError) as err:
            raise InputError(f"{path}: the HDF5 file is truncated or corrupt ({err}).") from None
    raise InputError(
        f"{path}: not a recognised scan format; expected an HTC2022 .mat file, a Data Exchange "
        "HDF5 or an NXtomo HDF5."
    )
