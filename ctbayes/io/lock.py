"""Single-writer locks: one run at a time writes an output file and its checkpoints.

`acquire(output)` takes an exclusive `flock` on the sidecar `OUTPUT.lock` and holds it until
`release(output)`, `release_all()` or the end of the process (the kernel drops a dead
process's lock, so a lock file left by a killed run never blocks the next one). A second
writer, in this or another process, gets an InputError naming the lock file.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
from pathlib import Path

from ctbayes.errors import InputError

_HELD: dict[str, tuple[int, Path]] = {}  # canonical output path -> (descriptor, lock file)


def lock_path(output) -> Path:
    """The lock file of an output file: OUTPUT.lock beside it."""
    output = Path(output)
    return output.with_name(output.name + ".lock")


def _key(output: Path) -> str:
    """One name per destination: the real folder and the file name (the output itself may be
    a symbolic link, which the atomic rename replaces rather than follows)."""
    return os.path.join(os.path.realpath(output.parent), output.name)


def acquire(output, what: str = "output file") -> Path:
    """Hold the exclusive lock of `output` until released; InputError if another writer holds
    it. Taking a lock this process already holds is a no-op."""
    output = Path(output)
    key = _key(output)
    if key in _HELD:
        return _HELD[key][1]
    path = lock_path(output)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise InputError(f"Cannot write the {what} {output}: its lock file {path} cannot be "
                             f"made ({err.strerror or err}).") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise InputError(f"Another ctbayes run is writing the {what} {output} (its lock file "
                             f"{path} is held); wait for that run to finish or choose another "
                             "output file.") from None
        try:  # the holder before us may have removed the file after we opened it: retry
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _HELD[key] = (fd, path)
    return path


def release(output) -> None:
    """Remove and unlock the lock file of `output`, if this process holds it."""
    held = _HELD.pop(_key(Path(output)), None)
    if held is not None:
        fd, path = held
        with contextlib.suppress(OSError):
            os.unlink(path)  # while still locked, so that no other writer locks a doomed file
        os.close(fd)


def release_all() -> None:
    """Release every lock this process holds (the CLI does so when a command ends)."""
    for key in list(_HELD):
        fd, path = _HELD.pop(key)
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


atexit.register(release_all)
