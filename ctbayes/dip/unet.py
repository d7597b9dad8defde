"""The deep-image-prior U-Net, in flax.nnx.

A fixed, deterministic function of its parameters: GroupNorm (statistics of the one input,
never of a batch), no mutable state, so `nnx.split`/`nnx.merge` give a pure function that can
be linearised with `jax.jvp`/`jax.vjp` over its parameters. Dropout layers exist only when
the rate is positive, and act only when a key is passed to the call (MC dropout).

Convolutions are computed as im2col matrix products (`_conv_matmul`): XLA's CPU convolution
is fast forward, but its weight gradient inside a `lax.scan` loop falls back to a kernel that
made a whole fit step about 9x slower (measured: 230 ms vs 26 ms per step at 64x64).
Matrix products keep forward, reverse and forward-mode derivatives fast everywhere.

Layout: z is (H, W, in_channels) or (N, H, W, in_channels); the output is (H, W) or
(N, H, W). Any H, W work: the down path uses stride-2 convolutions ("SAME", so sizes round
up) and the up path resizes to the exact size of each skip connection.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def _conv_matmul(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                 dimension_numbers=None, feature_group_count=1, precision=None, **_):
    """`lax.conv_general_dilated` for NHWC/HWIO "SAME" convolutions, as one matrix product.

    The signature is the one `nnx.Conv` calls; dilation and feature groups are not used here.
    """
    if padding != "SAME" or feature_group_count != 1 or any(
            d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ()))):
        raise ValueError("_conv_matmul supports undilated, ungrouped SAME convolutions only.")
    kh, kw, cin, cout = rhs.shape
    sh, sw = window_strides
    _, h, w, _ = lhs.shape
    ho, wo = -(-h // sh), -(-w // sw)
    ph, pw = max((ho - 1) * sh + kh - h, 0), max((wo - 1) * sw + kw - w, 0)
    x = jnp.pad(lhs, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    patches = jnp.concatenate([x[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw]
                               for i in range(kh) for j in range(kw)], axis=-1)
    return patches @ rhs.reshape(kh * kw * cin, cout)


def _groups(channels: int, max_groups: int = 8) -> int:
    """The largest group count up to `max_groups` that divides `channels`."""
    return next(g for g in range(min(channels, max_groups), 0, -1) if channels % g == 0)


class ConvBlock(nnx.Module):
    """Conv 3x3 (optionally strided) -> GroupNorm -> LeakyReLU."""

    def __init__(self, cin: int, cout: int, *, stride: int = 1, kernel: int = 3, rngs: nnx.Rngs):
        self.conv = nnx.Conv(cin, cout, (kernel, kernel), strides=stride, padding="SAME",
                             conv_general_dilated=_conv_matmul, rngs=rngs)
        self.norm = nnx.GroupNorm(cout, num_groups=_groups(cout), rngs=rngs)

    def __call__(self, x):
        return nnx.leaky_relu(self.norm(self.conv(x)), 0.2)


class UNet(nnx.Module):
    """U-Net with `len(channels)` scales.

    channels[i]: feature channels at scale i (scale 0 is full resolution).
    skip_channels[i]: channels of the 1x1 skip connection from scale i to the up path
    (0 = no skip at that scale; the coarsest scale feeds the up path directly, so its entry
    is unused).
    dropout: rate of the dropout before every up-path block (0 = no dropout layers at all).
    output_scale: a fixed (non-trainable) factor on the output, so the network's raw output is
    of order one whatever the image units are.

    The output is linear, with no sigmoid: images in line-integral units have no known upper
    bound, a sigmoid never reaches the air value 0 and its vanishing slope there would flatten
    the Jacobian that the linearised Laplace approximation uses; even given the true maximum, a
    sigmoid output brought no consistent gain.
    """

    def __init__(self, in_channels: int, channels: Sequence[int], skip_channels: Sequence[int],
                 *, dropout: float = 0.0, output_scale: float = 1.0, rngs: nnx.Rngs):
        channels, skip_channels = tuple(channels), tuple(skip_channels)
        if len(channels) < 1 or len(skip_channels) != len(channels):
            raise ValueError("channels and skip_channels need one entry per scale.")
        self.inc = nnx.List([ConvBlock(in_channels, channels[0], rngs=rngs),
                             ConvBlock(channels[0], channels[0], rngs=rngs)])
        self.down = nnx.List([
            nnx.List([ConvBlock(channels[i - 1], channels[i], stride=2, rngs=rngs),
                      ConvBlock(channels[i], channels[i], rngs=rngs)])
            for i in range(1, len(channels))])
        self.skip = nnx.List([ConvBlock(c, s, kernel=1, rngs=rngs) if s else None
                              for c, s in zip(channels[:-1], skip_channels[:-1])])
        self.up = nnx.List([
            nnx.List([ConvBlock(channels[i + 1] + skip_channels[i], channels[i], rngs=rngs),
                      ConvBlock(channels[i], channels[i], rngs=rngs)])
            for i in range(len(channels) - 1)])
        self.dropout = nnx.List([nnx.Dropout(dropout) for _ in range(len(channels) - 1)]) \
            if dropout > 0 else None
        self.outc = nnx.Conv(channels[0], 1, (1, 1), conv_general_dilated=_conv_matmul, rngs=rngs)
        self.output_scale = nnx.Variable(jnp.asarray(output_scale, jnp.float32))

    def __call__(self, z, *, key: jax.Array | None = None):
        """The image f(z). With a key (and dropout > 0) dropout is active, else it is off."""
        batched = z.ndim == 4
        x = z if batched else z[None]
        for block in self.inc:
            x = block(x)
        features = [x]
        for blocks in self.down:
            for block in blocks:
                x = block(x)
            features.append(x)
        for i in reversed(range(len(self.up))):
            skip = features[i]
            if self.dropout is not None and key is not None:
                x = self.dropout[i](x, deterministic=False, rngs=jax.random.fold_in(key, i))
            x = jax.image.resize(x, x.shape[:1] + skip.shape[1:3] + x.shape[3:], "bilinear")
            if self.skip[i] is not None:
                x = jnp.concatenate([x, self.skip[i](skip)], axis=-1)
            for block in self.up[i]:
                x = block(x)
        out = self.outc(x)[..., 0] * self.output_scale[...]
        return out if batched else out[0]
