"""Phase progress of long computations: which phase runs now, and how far it has come.

The engine marks its long phases (`phase("preconditioner")`, `phase("sampling", total=n)`)
and this module reports them according to one process-wide mode (`configure`):

- "bar": one line on stderr as a phase starts; a phase with a count gets a tqdm bar;
- "lines": one line on stderr per phase and nothing else (`--no-progress`: a run still
  says which phase it waits for, rather than staying silent for half an hour);
- "off" (the default for library use and tests): nothing.

Listeners (`listen`) receive every phase start and end whatever the mode: benchmarks use
them to attribute time and peak memory to phases. This module imports nothing of ctbayes.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Callable

MODES = ("off", "lines", "bar")

_lock = threading.Lock()
_state = {"mode": "off"}
_listeners: list[Callable[[str, str], None]] = []
_depth = [0]


def configure(mode: str) -> None:
    """Set how phases are reported: one of MODES."""
    if mode not in MODES:
        raise ValueError(f"progress mode {mode!r}; expected one of {', '.join(MODES)}")
    _state["mode"] = mode


def mode() -> str:
    return _state["mode"]


def listen(callback: Callable[[str, str], None]) -> Callable[[], None]:
    """Call callback(event, name) with event "start" or "end" at every phase boundary;
    returns a function that removes the listener."""
    with _lock:
        _listeners.append(callback)

    def remove():
        with _lock:
            if callback in _listeners:
                _listeners.remove(callback)

    return remove


def _notify(event: str, name: str) -> None:
    with _lock:
        listeners = list(_listeners)
    for callback in listeners:
        callback(event, name)


class _Counter:
    """What a phase body uses to report its count (a tqdm bar in "bar" mode)."""

    def __init__(self, bar):
        self._bar = bar

    def update(self, n: int = 1, **postfix) -> None:
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(n)


class _Silent(_Counter):
    def __init__(self):
        super().__init__(None)


@contextlib.contextmanager
def phase(name: str, total: int | None = None, detail: str = ""):
    """Mark a long phase: reports it (see the module docstring) and yields a counter whose
    `update(n)` advances the phase's bar when it has a count (`total`)."""
    _notify("start", name)
    current = _state["mode"]
    indent = "  " * _depth[0]
    bar = None
    if current != "off":
        print(f"ctbayes: {indent}{name}" + (f" ({detail})" if detail else "") + " ...",
              file=sys.stderr, flush=True)
        if current == "bar" and total is not None:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc=f"{indent}{name}", leave=False, dynamic_ncols=True,
                       file=sys.stderr)
    _depth[0] += 1
    start = time.perf_counter()
    try:
        yield _Counter(bar) if bar is not None else _Silent()
    finally:
        _depth[0] -= 1
        if bar is not None:
            bar.close()
        if current == "bar":
            print(f"ctbayes: {indent}{name}: {time.perf_counter() - start:.1f} s",
                  file=sys.stderr, flush=True)
        _notify("end", name)
