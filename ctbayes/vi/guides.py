"""The variational families: NumPyro's autoguides, chosen by a short name."""

from __future__ import annotations

from collections.abc import Callable

from numpyro.infer import autoguide, init_to_median

from ctbayes.errors import InputError

GUIDES = ("normal", "lowrank", "delta", "iaf")


def make_guide(model: Callable, kind: str = "normal", *, init_scale: float = 0.01,
               rank: int | None = None, num_flows: int = 2, hidden_dims=None,
               init_loc_fn=init_to_median(num_samples=15)):
    """An autoguide for `model`.

    "normal": AutoNormal, a diagonal Gaussian (the default); "lowrank":
    AutoLowRankMultivariateNormal with `rank` (None: NumPyro's default, about sqrt(dim));
    "delta": AutoDelta, a point mass, so SVI finds the MAP; "iaf": AutoIAFNormal, a normal
    pushed through `num_flows` inverse autoregressive flows (a flow guide). `init_scale` is
    the initial std of the Gaussian guides; the initial locations come from `init_loc_fn`
    (the median of a few prior draws: random, so hidden units are not symmetric).
    """
    if kind == "normal":
        return autoguide.AutoNormal(model, init_loc_fn=init_loc_fn, init_scale=init_scale)
    if kind == "lowrank":
        return autoguide.AutoLowRankMultivariateNormal(model, init_loc_fn=init_loc_fn,
                                                       init_scale=init_scale, rank=rank)
    if kind == "delta":
        return autoguide.AutoDelta(model, init_loc_fn=init_loc_fn)
    if kind == "iaf":
        return autoguide.AutoIAFNormal(model, init_loc_fn=init_loc_fn, num_flows=num_flows,
                                       hidden_dims=hidden_dims)
    raise InputError(f"Guide kind must be one of {', '.join(GUIDES)}, got {kind!r}.")
