"""Atomic file writes: a crash never leaves a half-written file that looks whole.

`prepare_output_file` and `prepare_output_directory` check a destination before a long run,
so that a path that can never be written fails in seconds rather than after the work.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from ctbayes.errors import InputError


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the permissions a new file gets
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def prepare_output_file(path, what: str = "output file") -> Path:
    """Check that a file can be written at `path`, making its folder; InputError if not."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"The {what} {path} is a directory; give a file name.")
    _make_directory(path.parent, f"the folder of the {what}")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise InputError(f"Cannot write the {what} {path}: its folder is not writable.")
    return path


def prepare_output_directory(path, what: str = "figure directory") -> Path:
    """Make the directory `path` (and its parents) now; InputError if it cannot be made."""
    path = Path(path)
    _make_directory(path, f"the {what}")
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError(f"Cannot write to the {what} {path}: it is not writable.")
    return path


def _make_directory(path: Path, what: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InputError(f"Cannot make {what}, {path}: a file of that name is in the way.") from None
    except OSError as err:
        raise InputError(f"Cannot make {what}, {path}: {err.strerror or err}.") from None
