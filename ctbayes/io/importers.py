"""`import_scan`: recognise a foreign scan file by its content and turn it into a Scan."""

from __future__ import annotations

from ctbayes.errors import InputError
from ctbayes.io.dxchange import import_dxchange
from ctbayes.io.formats import DXCHANGE, HTC2022_MAT, NXTOMO, scan_format
from ctbayes.io.hdf5 import read_scan
from ctbayes.io.inputs import check_input_file
from ctbayes.io.htc2022 import import_htc2022
from ctbayes.io.reduce import bin_detector, regrid, subsample_views
from ctbayes.scan import Scan

REDUCE_OPTIONS = ("every", "angle_range", "binning", "image_size")
OPTIONS = {
    HTC2022_MAT: REDUCE_OPTIONS + ("disc_truth",),
    DXCHANGE: REDUCE_OPTIONS + ("row", "center"),
    NXTOMO: REDUCE_OPTIONS,
}


def import_scan(src, **options) -> Scan:
    """Import an HTC2022 .mat, a Data Exchange HDF5 or an NXtomo HDF5 file as a Scan.

    The format is recognised by content (a MATLAB header or .mat suffix; /exchange/data;
    /entry/instrument/detector/data). options: every, angle_range (start_deg, stop_deg),
    binning, image_size for all formats; row and center for Data Exchange; disc_truth for
    HTC2022 (a homogeneous disc fitted as the ground truth). An option given as None (or a
    flag given as False) counts as not given; one the format does not take raises InputError.
    """
    path = check_input_file(src, "a scan file")
    kind = scan_format(path)
    given = {name: value for name, value in options.items()
             if value is not None and value is not False}
    unknown = sorted(set(options) - set(REDUCE_OPTIONS + ("row", "center", "disc_truth")))
    if unknown:
        raise InputError(
            f"{path}: unknown import option {', '.join(unknown)}; the options are every, "
            "angle_range, binning, image_size, row, center and disc_truth."
        )
    unsupported = sorted(set(given) - set(OPTIONS[kind]))
    if unsupported:
        raise InputError(
            f"{path}: option {', '.join(unsupported)} does not apply to {kind}; it accepts "
            f"{', '.join(OPTIONS[kind])}."
        )
    if kind == HTC2022_MAT:
        return import_htc2022(path, **given)
    if kind == DXCHANGE:
        return import_dxchange(path, **given)
    scan = subsample_views(read_scan(path), given.get("every", 1), given.get("angle_range"))
    scan = bin_detector(scan, given.get("binning", 1))
    return regrid(scan, given["image_size"]) if "image_size" in given else scan
