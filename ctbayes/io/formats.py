"""Which scan format a file holds, by content: the one recogniser that `ctbayes import` uses
to pick an importer and `read_scan` uses to name a file it cannot read as a scan."""

from __future__ import annotations

from pathlib import Path

import h5py

from ctbayes.errors import InputError

NXTOMO_DATA = "entry/instrument/detector/data"
DXCHANGE_DATA = "exchange/data"
HTC2022_MAT = "an HTC2022 .mat file"
DXCHANGE = "a Data Exchange HDF5 file"
NXTOMO = "an NXtomo HDF5 file"


def scan_format(path) -> str:
    """HTC2022_MAT (a MATLAB header or .mat suffix), DXCHANGE (/exchange/data) or NXTOMO
    (/entry/instrument/detector/data); InputError for anything else."""
    path = Path(path)
    with open(path, "rb") as f:
        header = f.read(128)
    if path.suffix.lower() == ".mat" or header.startswith(b"MATLAB"):
        return HTC2022_MAT
    if h5py.is_hdf5(path):
        try:
            with h5py.File(path, "r") as f:
                if DXCHANGE_DATA in f:
                    return DXCHANGE
                if NXTOMO_DATA in f:
                    return NXTOMO
        except (OSError, KeyError, RuntimeError) as err:
            raise InputError(f"{path}: the HDF5 file is truncated or corrupt ({err}).") from None
    raise InputError(
        f"{path}: not a recognised scan format; expected an HTC2022 .mat file, a Data Exchange "
        "HDF5 or an NXtomo HDF5."
    )
