"""How long XLA has spent compiling in this process: the share of a timing that a second run
of the same shapes would not pay (JAX's persistent cache, or compiled functions reused)."""

from __future__ import annotations

import threading

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
