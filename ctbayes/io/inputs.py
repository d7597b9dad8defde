"""Checks every reader of user files shares: that an input path leads to a readable regular
file (naming a symbolic-link loop or a dangling link as such), and that projection angles
stored in degrees are usable (finite, not all equal, not radians by mistake)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import numpy as np

from ctbayes.errors import InputError

MIN_ARC_DEGREES = 7.0
"""The smallest angular range a scan file may span. Angles stored in radians but read as
degrees span at most 2 pi = 6.28 "degrees", so a smaller arc is refused rather than taken as
a (hopeless) limited-angle scan."""


def check_input_file(path, expected: str, missing: str = "no such file") -> Path:
    """InputError unless `path` is an existing regular file; `expected` says what it should
    be, `missing` how to say that it is absent."""
    path = Path(path)
    try:
        info = os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise InputError(f"{path}: a loop of symbolic links, expected {expected}.") from None
        if os.path.islink(path):
            raise InputError(f"{path}: a symbolic link to {os.readlink(path)}, which does not "
                             f"exist; expected {expected}.") from None
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            raise InputError(f"{path}: {missing}.") from None
        raise InputError(f"{path}: cannot be opened ({err.strerror or err}); expected "
                         f"{expected}.") from None
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"{path}: is a directory, expected {expected}.")
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{path}: is not a regular file, expected {expected}.")
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        raise InputError(f"{path}: cannot be read ({err.strerror or err}); expected "
                         f"{expected}.") from None
    return path


def check_angles_degrees(angles_deg, where: str, field: str) -> np.ndarray:
    """The angles as float64 degrees; InputError where they are not finite, all equal, or
    span less than MIN_ARC_DEGREES (radians labelled degrees)."""
    angles = np.ravel(np.asarray(angles_deg, dtype=np.float64))
    if not np.all(np.isfinite(angles)):
        raise InputError(f"{where}: {field} contains NaN or infinite values.")
    if angles.size < 2:
        return angles
    arc = float(angles.max() - angles.min())
    if arc == 0:
        raise InputError(f"{where}: all {angles.size} angles in {field} are equal "
                         f"({angles[0]:g} degrees); a scan needs views from different angles.")
    if arc < MIN_ARC_DEGREES:
        raise InputError(
            f"{where}: the {angles.size} angles in {field} span only {arc:.3g} degrees "
            f"({angles.min():.4g} to {angles.max():.4g}), which looks like radians stored as "
            f"degrees; store degrees (radians * 180 / pi), since a scan needs an arc of at "
            f"least {MIN_ARC_DEGREES:g} degrees.")
    return angles
