"""The one place where a posterior method's name is dispatched.

Each `Method` maps to an `Entry`: its config dataclass (which owns the method's defaults and
checks), its builder `build(fit, A, y, config, *, samples, seed, noise_variance=None)`, and
what it needs from the DIP fit. Reconstruction, calibration, the design loop and the CLI all
look methods up here. Adding a posterior is one module with a config class and a `build`
function, plus one line in `REGISTRY`.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Callable

from ctbayes.errors import InputError
from ctbayes.posteriors import gp, laplace, mcdo, mfvi, score_vi


class Method(enum.StrEnum):
    """The posterior methods."""

    LAPLACE = "laplace"
    MCDO = "mcdo"
    MFVI = "mfvi"
    SCORE_VI = "score-vi"
    GP = "gp"


def _no_check(config, A, y, dip_config) -> None:
    """Nothing to refuse before the fit."""
    return None


def _same_network(config, dip):
    """The DIP settings as they are."""
    return dip


@dataclasses.dataclass(frozen=True)
class Entry:
    """What the registry knows of one method.

    config: its config dataclass (default-constructible). build: its builder.
    needs_fit: whether it is built from a fitted DIP (False: the GP prior, from the data
      alone). network(config, dip): the DIP settings it needs (MC dropout: dropout on).
    check(config, A, y, dip_config): refuse, before any fitting, a problem the method cannot
      handle with a DIP of `dip_config` (InputError).
    """

    config: type
    build: Callable
    needs_fit: bool = True
    network: Callable = _same_network
    check: Callable = _no_check


REGISTRY: dict[Method, Entry] = {
    Method.LAPLACE: Entry(laplace.LaplaceConfig, laplace.build, check=laplace.check_problem),
    Method.MCDO: Entry(mcdo.MCDOConfig, mcdo.build, network=mcdo.MCDOConfig.network),
    Method.MFVI: Entry(mfvi.MFVIConfig, mfvi.build),
    Method.SCORE_VI: Entry(score_vi.ScoreVIConfig, score_vi.build),
    Method.GP: Entry(gp.GPConfig, gp.build, needs_fit=False),
}


def method(name) -> Method:
    """The `Method` of a name; InputError naming the choices for an unknown one."""
    try:
        return Method(name)
    except ValueError:
        raise InputError(f"Unknown posterior method {name!r}; expected one of "
                         f"{', '.join(m.value for m in Method)}.") from None


def entry(name) -> Entry:
    """The registry entry of a method name."""
    return REGISTRY[method(name)]


def settings(name, config=None):
    """The method's config: `config` (checked to be of the method's class), or its defaults."""
    cls = entry(name).config
    if config is None:
        return cls()
    if not isinstance(config, cls):
        raise InputError(f"The {name} posterior takes a {cls.__name__}, got "
                         f"{type(config).__name__}.")
    return config


def build(name, fit, A, y, config=None, *, samples: int, seed: int = 0,
          noise_variance: float | None = None):
    """The posterior of method `name` (config None: its defaults) for y = A x + noise.

    fit: the DIP fit (a `ctbayes.dip.DIPFit`; None for a method that needs none).
    samples: posterior samples behind its Monte Carlo moments. noise_variance: the data's
    known noise variance, for methods that take it rather than learn it (the GP prior).
    """
    chosen = entry(name)
    if chosen.needs_fit and fit is None:
        raise InputError(f"The {name} posterior needs a fitted DIP.")
    return chosen.build(fit, A, y, settings(name, config), samples=samples, seed=seed,
                        noise_variance=noise_variance)


def config_from_dict(name, values: dict):
    """The method's config from its nested-JSON form (`dataclasses.asdict`), unknown keys
    refused."""
    cls = entry(name).config
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise InputError(f"Unknown {name} settings: {', '.join(sorted(unknown))}.")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
