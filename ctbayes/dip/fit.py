"""Deep-image-prior reconstruction: fit a U-Net f_theta(z) to one sinogram.

The loss is the discretisation of a resolution-free functional,

    L(x) = ||A x - y||^2 / ||y||^2  +  gamma * TV(x) / (c * sqrt(H * W)),   x = f_theta(z),

with TV the anisotropic total variation and c the mean image value of the best constant fit
(c = <A1, y> / ||A1||^2). The data term is the relative squared residual and the TV term
is the total variation of x/c per field-of-view width, so gamma does not depend on the units
of y or the pixel size, and one value serves images of different sizes. The network output is
multiplied by c (a fixed, non-trainable variable of the U-Net), so its raw output is of order
one whatever the units.

The fit runs as a jitted `lax.scan` over `chunk` Adam steps, compiled once (also across fits
with the same network and shapes) and called repeatedly; steps past the end of a chunk's
range are skipped by `lax.cond`, so chunk boundaries never change the arithmetic and a
resumed run reproduces an uninterrupted one bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from ctbayes.dip.checkpoint import load_checkpoint, save_checkpoint
from ctbayes.dip.unet import UNet
from ctbayes.errors import InputError
from ctbayes.metrics import psnr
from ctbayes.scan import data_fingerprint
from ctbayes.tv import total_variation

KEEP_MODES = ("ema", "best", "last")
_ADAM = optax.scale_by_adam()  # one module-level transform, so jitted steps are cached across fits
_adam_init = jax.jit(_ADAM.init)
# Fields that change the optimisation trajectory; a checkpoint must agree on all of them.
_RESUME_IRRELEVANT = ("iterations", "chunk", "checkpoint_every", "keep")


@dataclasses.dataclass(frozen=True)
class DIPConfig:
    """Settings of a DIP fit. The defaults were tuned on simulated sparse-view scans, for
    accuracy at a budget that fits 128x128 images in minutes on a CPU
    (benchmarks/RESULTS.md).

    iterations: Adam steps on the DIP loss (after the warm start).
    lr: Adam learning rate. High because GroupNorm makes most layers scale-invariant, so the
      effective step shrinks as weights grow.
    gamma: TV weight in the scale-free loss of this module (see the module docstring); 0 (no
      TV) lets the network overfit the noise.
    scales: U-Net scales (resolutions). channels, skip_channels: per scale, an int for all
      scales or a tuple of `scales` entries; skip 0 means no skip connection at that scale
      (the coarsest scale has none: its entry is ignored).
    in_channels: channels of the fixed random input z (a few beat one, at no cost).
    dropout: rate of the dropout layers in the up path (0: none; for MC dropout).
    seed: seeds the initial parameters, z and the dropout masks.
    warm_start: first fit the network to an initial image (the given `initial_image`, or
      else FBP of the data) for `warm_start_iterations` steps. On by default: it narrows the
      spread over seeds and raises the accuracy at a fixed budget.
    keep: which image to return. "best": the parameters of lowest loss; "ema": the network at
      the exponential moving average of the parameters (decay `ema_decay`); "last": the final
      parameters. The default "best" is the most robust: Adam at this learning rate makes
      occasional loss spikes, which "last" returns and "ema" averages in but "best" skips. All three are network outputs, so linearisable.
      With dropout > 0, "best" compares the dropout-noisy training losses.
    chunk: Adam steps per compiled `lax.scan` call (progress and checkpoints happen between).
    checkpoint_every: iterations between checkpoints (when a checkpoint path is given).
    """

    iterations: int = 2000
    lr: float = 1e-2
    gamma: float = 3e-5
    scales: int = 3
    channels: int | tuple[int, ...] = (16, 32, 64)
    skip_channels: int | tuple[int, ...] = (0, 4, 4)
    in_channels: int = 4
    dropout: float = 0.0
    seed: int = 0
    warm_start: bool = True
    warm_start_iterations: int = 200
    keep: str = "best"
    ema_decay: float = 0.99
    chunk: int = 50
    checkpoint_every: int = 500

    def __post_init__(self):
        for name in ("channels", "skip_channels"):
            value = getattr(self, name)
            value = (int(value),) * self.scales if np.isscalar(value) else tuple(int(v) for v in value)
            object.__setattr__(self, name, value)
            if len(value) != self.scales:
                raise InputError(f"DIP {name} needs one entry per scale ({self.scales}), got {value}.")
        rules = [  # (field, holds, rule)
            ("iterations", self.iterations >= 0, ">= 0"),
            ("lr", self.lr > 0, "positive"),
            ("gamma", self.gamma >= 0, ">= 0"),
            ("scales", self.scales >= 1, ">= 1"),
            ("channels", min(self.channels) >= 1, ">= 1"),
            ("skip_channels", min(self.skip_channels) >= 0, ">= 0"),
            ("in_channels", self.in_channels >= 1, ">= 1"),
            ("dropout", 0 <= self.dropout < 1, "in [0, 1)"),
            ("warm_start_iterations", self.warm_start_iterations >= 0, ">= 0"),
            ("keep", self.keep in KEEP_MODES, f"one of {', '.join(KEEP_MODES)}"),
            ("ema_decay", 0 <= self.ema_decay < 1, "in [0, 1)"),
            ("chunk", self.chunk >= 1, ">= 1"),
            ("checkpoint_every", self.checkpoint_every >= 1, ">= 1"),
            ("seed", 0 <= self.seed < 2 ** 32, "in [0, 2**32)"),
        ]
        for name, holds, rule in rules:
            if not holds:
                raise InputError(f"Invalid DIP setting: {name} must be {rule}, "
                                 f"got {getattr(self, name)!r}.")

    def _as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def trajectory_fields(self) -> dict:
        """The settings that determine the fit's path (all but length, chunking and `keep`)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self._as_dict().items()
                if k not in _RESUME_IRRELEVANT}


# Named network sizes (`network_preset`, `ctbayes reconstruct --network`). "large": the
# six-scale U-Net of the published Walnut experiments (Barbano et al. 2022; Antoran et al.
# TMLR 2023), up to 128 channels, about 2.2M parameters, for large images; the Laplace pass
# sizes its blocks and rank to the memory budget (`ctbayes.laplace.memory`).
NETWORKS = {
    "default": {},
    "large": dict(scales=6, channels=(32, 64, 128, 128, 128, 128),
                  skip_channels=(0, 4, 4, 4, 4, 4)),
}


def network_preset(config: DIPConfig, name: str) -> DIPConfig:
    """config with the network size called `name` (one of NETWORKS)."""
    if name not in NETWORKS:
        raise InputError(f"Unknown network {name!r}; expected one of {', '.join(NETWORKS)}.")
    return dataclasses.replace(config, **NETWORKS[name])


@dataclasses.dataclass
class DIPFit:
    """A fitted DIP network: what `fit_dip` returns and `refit` continues.

    image: the kept image (H, W).
    graphdef, params, rest: the network at the kept parameters, so that
      `nnx.merge(graphdef, params, rest)(z)` is `image` (rest holds the fixed output scale).
    z: the network input. config: the settings of the fit.
    kept: which of "ema", "best", "last" the image is. scale: the image scale c of the loss.
    loss, data_loss: per iteration, the total loss and the relative residual term.
    psnr: (k, 2) array of (iteration, PSNR of the kept image) at chunk ends, when a ground
      truth was given, else None.
    images, losses: the "ema", "best" and "last" images and their (deterministic) losses.
    timings: seconds: "setup", "warm_start", "compile", "fit" (iterations, no compile),
      "total"; and "iterations_per_second".
    """

    image: np.ndarray
    graphdef: nnx.GraphDef
    params: nnx.State
    rest: nnx.State
    z: jax.Array
    config: DIPConfig
    kept: str = "best"
    scale: float = float("nan")
    loss: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float32))
    data_loss: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float32))
    psnr: np.ndarray | None = None
    images: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    losses: dict[str, float] = dataclasses.field(default_factory=dict)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)

    def network(self) -> UNet:
        """The U-Net at the kept parameters."""
        return nnx.merge(self.graphdef, self.params, self.rest)

    @property
    def render(self):
        """params -> image for this network (`image_function`): what the linearised model
        and the posteriors differentiate, compiled once per network shape."""
        return image_function(self.graphdef, self.rest, self.z)


DIPResult = DIPFit  # the name `fit_dip`'s result had before refits shared the type


def build_network(config: DIPConfig, image_shape, output_scale: float = 1.0):
    """The U-Net and its input z for a config and image shape, exactly as `fit_dip` makes them.

    Returns (model, z) with z of shape (H, W, in_channels). The parameters and z come from
    independent streams of `config.seed` (see `_init_state` for the initialisation).
    """
    key_params, key_z = jax.random.split(jax.random.key(config.seed))
    arch = (config.in_channels, config.channels, config.skip_channels, config.dropout)
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: _unet(arch, nnx.Rngs(0))))
    model = nnx.merge(graphdef, _init_state(arch, key_params, jnp.float32(output_scale)))
    z = jax.random.normal(key_z, tuple(image_shape) + (config.in_channels,), jnp.float32)
    return model, z


def image_function(graphdef, rest, z):
    """params -> the network's image, as a `jax.tree_util.Partial` over (graphdef, rest, z):
    jitted functions take it as an argument with z and rest traced, so every fit of one
    network shape (other seeds, data, refits) shares their compiled code."""
    return jax.tree_util.Partial(_image, graphdef, rest, z)


def _image(graphdef, rest, z, params):
    return nnx.merge(graphdef, params, rest)(z)


def parameter_count(config: DIPConfig) -> int:
    """The number of trainable parameters of the configured U-Net (shapes only, no compute)."""
    arch = (config.in_channels, config.channels, config.skip_channels, config.dropout)
    params = nnx.state(nnx.eval_shape(lambda: _unet(arch, nnx.Rngs(0))), nnx.Param)
    return sum(leaf.size for leaf in jax.tree.leaves(params))


def _unet(arch, rngs):
    in_channels, channels, skip_channels, dropout = arch
    return UNet(in_channels, channels, skip_channels, dropout=dropout, rngs=rngs)


@functools.partial(jax.jit, static_argnames=("arch",))
def _init_state(arch, key, output_scale):
    """Initial network state: kernels N(0, 1/fan_in), biases 0, norm scales 1.

    All kernels come from ONE normal draw: XLA unrolls the threefry generator per draw, so
    per-layer initialisers (`nnx.Conv`'s) compile many times slower than one draw.
    """
    state = nnx.state(nnx.eval_shape(lambda: _unet(arch, nnx.Rngs(0))))
    paths, leaves = zip(*nnx.to_flat_state(state))
    kernels = [i for i, p in enumerate(paths) if p[-1] == "kernel"]
    noise = jax.random.normal(key, (sum(leaves[i].size for i in kernels),), jnp.float32)
    values, offset = [], 0
    for i, (path, leaf) in enumerate(zip(paths, leaves)):
        if i in kernels:
            fan_in = int(np.prod(leaf.shape[:-1]))
            value = noise[offset:offset + leaf.size].reshape(leaf.shape) / np.sqrt(fan_in)
            offset += leaf.size
        elif path[-1] == "output_scale":
            value = output_scale
        else:
            value = jnp.full(leaf.shape, 1.0 if path[-1] == "scale" else 0.0, jnp.float32)
        values.append(leaf.replace(value))
    return nnx.from_flat_state(list(zip(paths, values)))


def image_scale(A, y) -> float:
    """The mean value c of the best constant image: <A1, y> / ||A1||^2 (its magnitude)."""
    a1 = A(jnp.ones(A.domain_shape, jnp.float32))
    c = abs(float(jnp.vdot(a1, y) / jnp.vdot(a1, a1)))
    if not np.isfinite(c):
        raise InputError("The sinogram's values are too large for float32 arithmetic: its best "
                         "constant-image fit overflows; rescale the data.")
    if c == 0:
        raise InputError("The sinogram carries no signal: its best constant-image fit is zero.")
    return c


# -- the compiled pieces ---------------------------------------------------------------------
def _loss_terms(graphdef, params, rest, z, A, y, consts, key):
    """Total loss, relative residual and image for parameters `params`."""
    x = nnx.merge(graphdef, params, rest)(z, key=key)
    data = jnp.sum((A(x) - y) ** 2) * consts["inv_y2"]
    return data + consts["gamma"] * total_variation(x) * consts["tv_norm"], (data, x)


@functools.partial(jax.jit, static_argnames=("graphdef", "length"))
def _fit_chunk(graphdef, length, carry, rest, z, A, y, consts, start, stop):
    """Run Adam steps start..min(start+length, stop)-1; later steps of the scan are skipped."""
    dropout_key = jax.random.fold_in(jax.random.key(consts["seed"]), 2)

    def step(carry, it):
        def active(carry):
            key = jax.random.fold_in(dropout_key, it)
            grad_fn = jax.value_and_grad(_loss_terms, argnums=1, has_aux=True)
            (loss, (data, _)), grads = grad_fn(graphdef, carry["params"], rest, z, A, y, consts, key)
            better = loss < carry["best_loss"]
            best = jax.tree.map(lambda b, p: jnp.where(better, p, b), carry["best"], carry["params"])
            updates, opt_state = _ADAM.update(grads, carry["opt_state"])
            params = jax.tree.map(lambda p, u: p - consts["lr"] * u, carry["params"], updates)
            decay = consts["ema_decay"]
            ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, carry["ema"], params)
            new = dict(params=params, opt_state=opt_state, ema=ema, best=best,
                       best_loss=jnp.minimum(loss, carry["best_loss"]))
            return new, jnp.stack([loss, data])

        def skip(carry):
            return carry, jnp.full(2, jnp.nan, jnp.float32)

        return jax.lax.cond(it < stop, active, skip, carry)

    return jax.lax.scan(step, carry, start + jnp.arange(length))


@functools.partial(jax.jit, static_argnames=("graphdef", "length"))
def _warm_start(graphdef, length, params, rest, z, target, lr):
    """Fit the network to `target` by Adam on the mean squared error (relative to target)."""
    norm = 1.0 / jnp.maximum(jnp.mean(target ** 2), 1e-30)

    def step(carry, _):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(
            lambda p: jnp.mean((nnx.merge(graphdef, p, rest)(z) - target) ** 2) * norm)(params)
        updates, opt_state = _ADAM.update(grads, opt_state)
        return (jax.tree.map(lambda p, u: p - lr * u, params, updates), opt_state), loss

    (params, _), losses = jax.lax.scan(step, (params, _ADAM.init(params)), None, length=length)
    return params, losses


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _evaluate(graphdef, params, rest, z, A, y, consts):
    """Deterministic (dropout off) loss and image."""
    loss, (_, x) = _loss_terms(graphdef, params, rest, z, A, y, consts, None)
    return loss, x


# -- the fit ---------------------------------------------------------------------------------
def _loss_constants(A, y, config, lr=None):
    """Sinogram (float32), image scale and the loss constants of a fit (learning rate lr,
    default config.lr)."""
    y_j = jnp.asarray(y, jnp.float32)
    scale = image_scale(A, y_j)
    consts = dict(inv_y2=jnp.float32(1.0 / float(jnp.sum(y_j ** 2))),
                  tv_norm=jnp.float32(1.0 / (scale * np.sqrt(np.prod(A.domain_shape)))),
                  gamma=jnp.float32(config.gamma), lr=jnp.float32(lr or config.lr),
                  ema_decay=jnp.float32(config.ema_decay), seed=jnp.uint32(config.seed))
    return y_j, scale, consts


def _setup(A, y, config):
    """Sinogram, image scale, loss constants, the split network and z for a fit."""
    y_j, scale, consts = _loss_constants(A, y, config)
    model, z = build_network(config, tuple(A.domain_shape), output_scale=scale)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return y_j, scale, consts, graphdef, params, rest, z


def _initial_carry(params):
    return dict(params=params, opt_state=_adam_init(params), ema=params, best=params,
                best_loss=jnp.float32(jnp.inf))


def _check_image(name, image, shape):
    if image is None:
        return None
    image = np.asarray(image, np.float32)
    if image.shape != tuple(shape):
        raise InputError(f"The {name} has shape {image.shape}; the geometry's image is "
                         f"{tuple(shape)}.")
    if not np.all(np.isfinite(image)):
        raise InputError(f"The {name} contains NaN or infinite values.")
    return image


def _initial_image(A, y, initial_image):
    if initial_image is not None:
        return initial_image
    from ctbayes.operators.fbp import fbp

    return fbp(np.asarray(y), A.geometry)


def fit_dip(A, y, config: DIPConfig = DIPConfig(), *, initial_image=None, ground_truth=None,
            checkpoint=None, resume: bool = False, progress: bool = True,
            callback: Callable[[int, dict], None] | None = None) -> DIPFit:
    """Reconstruct an image from sinogram y = A x + noise with a deep image prior.

    initial_image: target of the warm start (default: FBP of y); ignored without warm start.
    ground_truth: only for reporting PSNR (progress bar and `DIPFit.psnr`).
    checkpoint: path of a checkpoint file, written atomically every `checkpoint_every`
      iterations and when the fit is interrupted (KeyboardInterrupt or an exception from
      `callback`). resume: continue from that file if it exists (else start anew); the
      result equals that of an uninterrupted run. A checkpoint written with other settings
      or data raises InputError.
    callback: called after every chunk with (iteration, {"loss", "data_loss", "psnr"}).
    """
    t_start = time.perf_counter()
    shape = tuple(A.domain_shape)
    y = np.asarray(y, np.float32)
    if y.shape != tuple(A.range_shape):
        raise InputError(f"The sinogram has shape {y.shape}; the geometry expects "
                         f"{tuple(A.range_shape)}.")
    if not np.all(np.isfinite(y)):
        raise InputError("The sinogram contains NaN or infinite values.")
    initial_image = _check_image("initial image", initial_image, shape)
    ground_truth = _check_image("ground truth", ground_truth, shape)
    y_j, scale, consts, graphdef, params, rest, z = _setup(A, y, config)
    timings = dict(setup=time.perf_counter() - t_start, warm_start=0.0, compile=0.0, fit=0.0)

    fingerprint = data_fingerprint(A.geometry, y, initial_image if config.warm_start else None)
    carry = _initial_carry(params)
    iteration, history, psnr_rows = 0, np.zeros((0, 2), np.float32), []
    resumed_fit_seconds = 0.0
    if resume and checkpoint is not None and Path(checkpoint).exists():
        carry, iteration, history, psnr_rows, timings["fit"] = load_checkpoint(
            checkpoint, carry, config, fingerprint, config.iterations)
        resumed_fit_seconds = timings["fit"]
    elif config.warm_start and config.warm_start_iterations > 0:
        t0 = time.perf_counter()
        target = jnp.asarray(_initial_image(A, y, initial_image), jnp.float32)
        params, _ = jax.block_until_ready(_warm_start(
            graphdef, config.warm_start_iterations, params, rest, z, target, jnp.float32(config.lr)))
        carry = dict(carry, params=params, ema=params, best=params, opt_state=_adam_init(params))
        timings["warm_start"] = time.perf_counter() - t0

    def render(p):
        return _evaluate(graphdef, p, rest, z, A, y_j, consts)

    def kept_params(c):
        return c["params"] if config.keep == "last" else c[config.keep]

    if iteration < config.iterations:
        t0 = time.perf_counter()
        run = _fit_chunk.lower(graphdef, config.chunk, carry, rest, z, A, y_j, consts,
                               iteration, iteration).compile()
        timings["compile"] = time.perf_counter() - t0
    histories = [history]
    bar = tqdm(total=config.iterations, initial=iteration, disable=not progress, desc="DIP",
               unit="it", dynamic_ncols=True)
    try:
        t_fit = time.perf_counter() - timings["fit"]
        while iteration < config.iterations:
            next_checkpoint = (iteration // config.checkpoint_every + 1) * config.checkpoint_every
            stop = min(iteration + config.chunk, config.iterations,
                       next_checkpoint if checkpoint is not None else config.iterations)
            new_carry, out = run(carry, rest, z, A, y_j, consts, iteration, stop)
            out = np.asarray(out)[: stop - iteration]
            carry, iteration = new_carry, stop
            histories.append(out)
            info = dict(loss=float(out[-1, 0]), data_loss=float(out[-1, 1]), psnr=None)
            if ground_truth is not None:
                info["psnr"] = psnr(np.asarray(render(kept_params(carry))[1]), ground_truth)
                psnr_rows.append((iteration, info["psnr"]))
            timings["fit"] = time.perf_counter() - t_fit
            if checkpoint is not None and (iteration % config.checkpoint_every == 0
                                           or iteration == config.iterations):
                save_checkpoint(checkpoint, carry, iteration, np.concatenate(histories),
                                 psnr_rows, config, fingerprint, timings["fit"])
            bar.set_postfix({k: f"{v:.4g}" for k, v in info.items() if v is not None}, refresh=False)
            bar.update(stop - bar.n)
            if callback is not None:
                callback(iteration, info)
    except BaseException:
        if checkpoint is not None and iteration > 0:
            save_checkpoint(checkpoint, carry, iteration, np.concatenate(histories), psnr_rows,
                             config, fingerprint, timings["fit"])
        raise
    finally:
        bar.close()

    history = np.concatenate(histories)
    candidates = dict(ema=carry["ema"], best=carry["best"], last=carry["params"])
    evaluated = {k: render(p) for k, p in candidates.items()}
    losses = {k: float(v[0]) for k, v in evaluated.items()}
    if losses["last"] <= losses["best"] or iteration == 0:  # the last step's loss is not in the scan
        candidates["best"], evaluated["best"], losses["best"] = \
            candidates["last"], evaluated["last"], losses["last"]
    images = {k: np.asarray(v[1]) for k, v in evaluated.items()}
    # a resumed fit's "fit" includes the iterations before the interruption: so does "total"
    timings["total"] = time.perf_counter() - t_start + resumed_fit_seconds
    timings["iterations_per_second"] = \
        len(history) / timings["fit"] if timings["fit"] else float("nan")
    return DIPFit(
        image=images[config.keep], kept=config.keep, graphdef=graphdef,
        params=candidates[config.keep], rest=rest, z=z, scale=scale,
        loss=history[:, 0].copy(), data_loss=history[:, 1].copy(),
        psnr=np.asarray(psnr_rows, np.float64).reshape(-1, 2) if ground_truth is not None else None,
        images=images, losses=losses, timings=timings, config=config)


def refit(fit: DIPFit, A, y, iterations: int, lr: float | None = None,
          config: DIPConfig | None = None) -> DIPFit:
    """Continue fitting `fit` to new data y = A x for `iterations` Adam steps: a warm start
    from its parameters with a fresh Adam state, on the same scale-free DIP + TV loss
    (`fit_dip`), at learning rate lr (default: the config's). config: the settings (default:
    the fit's own; the network's shape must match). Keeps config.keep's parameters, the
    best by the last step's loss as in `fit_dip`. The design loop refits this way as views
    arrive; with a fixed operator shape it compiles once.
    """
    config = config or fit.config
    if iterations <= 0:
        return fit
    y_j, scale, consts = _loss_constants(A, y, config, lr)
    carry = _initial_carry(fit.params)
    it = 0
    while it < iterations:
        stop = min(it + config.chunk, iterations)
        carry, _ = _fit_chunk(fit.graphdef, config.chunk, carry, fit.rest, fit.z, A, y_j,
                              consts, it, stop)
        it = stop
    if config.keep == "last":
        params = carry["params"]
    else:
        params = carry[config.keep]
        last_loss = _evaluate(fit.graphdef, carry["params"], fit.rest, fit.z, A, y_j, consts)[0]
        if config.keep == "best" and float(last_loss) <= float(carry["best_loss"]):
            params = carry["params"]
    loss, image = _evaluate(fit.graphdef, params, fit.rest, fit.z, A, y_j, consts)
    image = np.asarray(image, np.float32)
    return dataclasses.replace(fit, image=image, params=params, config=config, scale=scale,
                               images={config.keep: image}, losses={config.keep: float(loss)})


def time_breakdown(A, y, config: DIPConfig = DIPConfig(), repeats: int = 20,
                   trials: int = 3) -> dict:
    """Seconds per iteration of the ray transform, the network and a full DIP step.

    Each is a jitted `lax.scan` of `repeats` iterations on the fit's shapes, timed after
    compilation (best of `trials` runs, which keeps scheduler noise out): "operator" is one A
    and one A^T (what the data-term gradient costs), "network" one forward and backward pass
    of the U-Net, "step" one complete Adam step of `fit_dip`. The fractions are operator/step
    and network/step; timed apart, they need not sum to one.
    """
    y_j, _, consts, graphdef, params, rest, z = _setup(A, y, config)
    carry = _initial_carry(params)
    x0 = jnp.zeros(A.domain_shape, jnp.float32)

    runs = dict(
        operator=lambda: _bench_operator(A, x0, y_j, repeats),
        network=lambda: _bench_network(graphdef, params, rest, z, repeats),
        step=lambda: _fit_chunk(graphdef, repeats, carry, rest, z, A, y_j, consts, 0, repeats),
    )
    seconds = {}
    for name, fn in runs.items():
        jax.block_until_ready(fn())  # compile
        best = np.inf
        for _ in range(trials):
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            best = min(best, time.perf_counter() - t0)
        seconds[name] = best / repeats
    return dict(seconds_per_iteration=seconds,
                operator_fraction=seconds["operator"] / seconds["step"],
                network_fraction=seconds["network"] / seconds["step"],
                iterations_per_second=1.0 / seconds["step"], image_shape=tuple(A.domain_shape),
                sinogram_shape=tuple(A.range_shape), backend=A.backend)


@functools.partial(jax.jit, static_argnames=("n",))
def _bench_operator(A, x, y, n):
    """n gradient steps on ||A x - y||^2: one A and one A^T each."""
    return jax.lax.scan(lambda x, _: (x - 1e-3 * A.T(A(x) - y), None), x, None, length=n)[0]


@functools.partial(jax.jit, static_argnames=("graphdef", "n"))
def _bench_network(graphdef, params, rest, z, n):
    """n gradient steps on the mean square of the network output: one forward and backward."""
    def step(p, _):
        g = jax.grad(lambda p: jnp.mean(nnx.merge(graphdef, p, rest)(z) ** 2))(p)
        return jax.tree.map(lambda a, b: a - 1e-3 * b, p, g), None

    return jax.lax.scan(step, params, None, length=n)[0]
