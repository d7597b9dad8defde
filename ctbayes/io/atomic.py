"""Atomic file writes: a crash never leaves a half-written file that looks whole.

`prepare_output_file` and `prepare_output_directory` check a destination before a long run,
so that a path that can never be written fails in seconds rather than after the work.
`prepare_output_file` is the one gate every command passes before it writes: it refuses an
output that is one of the inputs (by file identity, so a symbolic or hard link or another
spelling of the same path counts), probes the folder with a real file, and takes the output's
single-writer lock (`ctbayes.io.lock`), which also covers its checkpoints.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from ctbayes.errors import InputError
from ctbayes.io import lock


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
        try:
            os.replace(tmp, path)
        except OSError as err:  # name the destination, not the temporary file
            raise OSError(err.errno, err.strerror, str(path)) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def prepare_output_file(path, what: str = "output file", inputs=(), *, lock_output: bool = True) -> Path:
    """Check that the file `path` can be written and is none of `inputs`, make its folder,
    and take its single-writer lock (held until `ctbayes.io.lock.release` or the process
    ends); InputError if any of that fails."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"The {what} {path} is a directory; give a file name.")
    for source in inputs:
        if source is not None and same_file(path, source):
            raise InputError(f"The {what} {path} is the input file {source}: writing it would "
                             "destroy the input; choose another output file.")
    _make_directory(path.parent, f"the folder of the {what}")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise InputError(f"Cannot write the {what} {path}: its folder is not writable.")
    _probe(path, what)
    if lock_output:
        lock.acquire(path, what)
    return path


def same_file(a, b) -> bool:
    """Whether paths `a` and `b` name one file: the same real path, or (both existing) the
    same device and inode, which also catches hard links."""
    a, b = Path(a), Path(b)
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def checkpoint_path(output) -> Path:
    """The DIP checkpoint of an output file: OUTPUT.ckpt.npz beside it (without .h5)."""
    output = Path(output)
    return output.with_name(output.name.removesuffix(".h5") + ".ckpt.npz")


def _probe(path: Path, what: str) -> None:
    """Write and remove a small file in the destination's folder: permission bits do not tell
    (root passes os.access everywhere, /proc refuses new files)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
    except OSError as err:
        raise InputError(f"Cannot write the {what} {path}: a file cannot be made in its folder "
                         f"({err.strerror or err}).") from None
    os.close(fd)
    os.unlink(probe)


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
