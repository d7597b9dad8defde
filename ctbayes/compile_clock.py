"""How long XLA has spent compiling in this process: the share of a timing that a second run
of the same shapes would not pay (JAX's persistent cache, or compiled functions reused)."""

from __future__ import annotations

import contextlib
import threading
import time

import jax

_EVENT = "/jax/core/compile/backend_compile_duration"
_lock = threading.Lock()
_total = [0.0]
_listening = [False]


def _record(event: str, seconds: float, **_) -> None:
    if event == _EVENT:
        with _lock:
            _total[0] += seconds


def compile_seconds() -> float:
    """Seconds of XLA compilation since the first call of this function (JAX's monitoring
    events; compilations served from the persistent cache do not count)."""
    with _lock:
        if not _listening[0]:
            jax.monitoring.register_event_duration_secs_listener(_record)
            _listening[0] = True
        return _total[0]


@contextlib.contextmanager
def stopwatch(timings: dict, name: str):
    """Add the wall seconds of the block to timings[name] and the XLA compilation within them
    to timings[name + "_compile"] (both accumulate over repeated blocks). The block should
    wait for its device results (`jax.block_until_ready`), or its time lands in the next."""
    compiled, start = compile_seconds(), time.perf_counter()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
        timings[f"{name}_compile"] = (timings.get(f"{name}_compile", 0.0)
                                      + compile_seconds() - compiled)
