"""Posteriors over the image: one interface, one module per method, one registry.

`base` holds the `ImagePosterior` protocol and its declared optional capabilities; `laplace`
(an adapter over the `ctbayes.laplace` engine), `mcdo`, `mfvi`, `score_vi` and `gp` hold one
method each, with its config dataclass and builder; `registry` maps a method name to them.
"""

from ctbayes.posteriors.base import Diagnostics, ImagePosterior, PosteriorBase, sample_moments
from ctbayes.posteriors.registry import REGISTRY, Entry, Method, build

__all__ = ["Diagnostics", "Entry", "ImagePosterior", "Method", "PosteriorBase", "REGISTRY",
           "build", "sample_moments"]
