"""Any `flax.nnx` module as a Bayesian neural network, with priors chosen by parameter name.

The lifting itself is NumPyro's `numpyro.contrib.module.random_nnx_module` (it works with
flax 0.12 and numpyro 0.22): every `nnx.Param` becomes a sample site named
"<module name>/<path>", e.g. "net/layers.0.kernel". This module adds the name-based prior
rules, a small MLP and a classification model with a subsampled (minibatch) plate.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from flax import nnx
from numpyro.contrib.module import random_nnx_module

from ctbayes.errors import InputError

ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu, "gelu": jax.nn.gelu, "silu": jax.nn.silu}
LIKELIHOODS = ("bernoulli", "categorical")


def name_prior(rules: Mapping[str, dist.Distribution],
               default: dist.Distribution | None = None) -> Callable[[str, tuple], dist.Distribution]:
    """A prior callable for `random_nnx_module`: the first rule whose regular expression
    matches (`re.search`) the parameter path, e.g. "layers.0.bias", gives its distribution.

    `name_prior({"bias$": Normal(0, 1), "kernel$": SoftLaplace(0, 1)})` puts a Normal on
    the biases and a SoftLaplace on the weights. Without a match, `default` is used, or an
    InputError names the parameter (so no parameter silently gets a prior you did not mean).
    """
    compiled = [(re.compile(pattern), d) for pattern, d in rules.items()]

    def prior(name: str, shape: tuple) -> dist.Distribution:
        for pattern, d in compiled:
            if pattern.search(name):
                return d
        if default is None:
            raise InputError(f"No prior rule matches the parameter {name!r} (shape {shape}); "
                             f"add a rule or a default.")
        return default

    return prior


def random_module(name: str, module: nnx.Module, prior) -> Callable:
    """The module with its parameters drawn from `prior` (a distribution, a dict of
    parameter paths, or a callable (path, shape) -> distribution such as `name_prior`);
    call it inside a NumPyro model. A thin alias of NumPyro's `random_nnx_module`."""
    return random_nnx_module(name, module, prior)


class MLP(nnx.Module):
    """A fully connected network: `hidden` layer widths, one activation, linear output."""

    def __init__(self, din: int, hidden: Sequence[int], dout: int, *, activation: str = "tanh",
                 rngs: nnx.Rngs):
        if activation not in ACTIVATIONS:
            raise InputError(f"MLP activation must be one of {', '.join(ACTIVATIONS)}, "
                             f"got {activation!r}.")
        sizes = [din, *hidden, dout]
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
        self.activation = activation

    def __call__(self, x):
        act = ACTIVATIONS[self.activation]
        for layer in self.layers[:-1]:
            x = act(layer(x))
        return self.layers[-1](x)


def classifier_model(module: nnx.Module, prior, *, likelihood: str = "bernoulli",
                     name: str = "net") -> Callable:
    """A NumPyro model `model(x, y=None, batch_size=None)` of a BNN classifier.

    "bernoulli": the module returns one logit per row (N, 1), labels are 0/1; "categorical":
    it returns K logits, labels are 0..K-1. The class probabilities are recorded as the
    deterministic site "probs" ((N,) for bernoulli, (N, K) for categorical). With
    `batch_size`, the data plate subsamples that many rows per step and scales the
    likelihood by N / batch_size (minibatch SVI); the full `x` and `y` are passed every step.
    """
    if likelihood not in LIKELIHOODS:
        raise InputError(f"likelihood must be one of {', '.join(LIKELIHOODS)}, got {likelihood!r}.")

    def model(x, y=None, batch_size=None):
        net = random_module(name, module, prior)
        with numpyro.plate("data", x.shape[0], subsample_size=batch_size) as idx:
            xb = x if batch_size is None else jnp.asarray(x)[idx]
            yb = None if y is None else (y if batch_size is None else jnp.asarray(y)[idx])
            logits = net(xb)
            if likelihood == "bernoulli":
                logits = logits[..., 0]
                numpyro.deterministic("probs", jax.nn.sigmoid(logits))
                numpyro.sample("y", dist.Bernoulli(logits=logits), obs=yb)
            else:
                numpyro.deterministic("probs", jax.nn.softmax(logits, axis=-1))
                numpyro.sample("y", dist.Categorical(logits=logits), obs=yb)

    return model
