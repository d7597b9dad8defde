"""ASTRA as JAX primitives: forward and back projection through a host callback.

Two linear primitives, `astra_fp` and `astra_bp`, each the transpose of the other, so JAX can
jit, vmap, differentiate (forward and reverse) and `linear_transpose` them. Only this module
and `sparse_backend` call ASTRA.

ASTRA 2.5 refuses read-only buffers ("Failed to link dlpack array"), and JAX hands callbacks
read-only arrays: every array is copied into a writable, contiguous float32 buffer first.
ASTRA's 3D code kills the process when no GPU is present, so 3D geometries are refused with a
clear error before ASTRA is called.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from ctbayes.errors import InputError
from ctbayes.geometry import Geometry

CPU_PROJECTORS = {"parallel": ("linear", "strip", "line"), "fanflat": ("line_fanflat", "strip_fanflat")}
DEFAULT_PROJECTOR = {"parallel": "linear", "fanflat": "line_fanflat"}


@functools.cache
def cuda_available() -> bool:
    """True when ASTRA was built with CUDA and sees a GPU."""
    import astra

    try:
        return bool(astra.use_cuda())
    except Exception:  # noqa: BLE001 - any failure means no usable GPU
        return False


# a detector bin integrates the projection over its width: these CPU projectors give the
# exact strip integral of each pixel over a bin, where the defaults trace one thin ray per bin
BIN_INTEGRATING_PROJECTOR = {"parallel": "strip", "fanflat": "strip_fanflat"}


def resolve_projector(geometry: Geometry, projector: str | None, use_cuda: bool | None) -> str:
    """Pick and check the ASTRA projector type for a geometry ("cuda"/"cuda3d" on a GPU)."""
    if use_cuda is None:
        use_cuda = cuda_available()
    if geometry.is_3d:
        if not cuda_available():
            raise InputError(
                f"The {geometry.beam} geometry is 3D and needs ASTRA with CUDA on a GPU; "
                "no GPU is available here."
            )
        return "cuda3d"
    if use_cuda:
        if not cuda_available():
            raise InputError("ASTRA CUDA was requested but no GPU is available.")
        return "cuda"
    projector = projector or DEFAULT_PROJECTOR[geometry.beam]
    if projector not in CPU_PROJECTORS[geometry.beam]:
        raise InputError(
            f"Projector {projector!r} does not fit a {geometry.beam} geometry; expected one of "
            f"{', '.join(CPU_PROJECTORS[geometry.beam])}."
        )
    return projector


@functools.lru_cache(maxsize=64)
def projector_id(geometry: Geometry, projector: str) -> int:
    """An ASTRA 2D projector for this geometry, created once and reused."""
    import astra

    return astra.create_projector(projector, geometry.astra_proj_geom(), geometry.astra_vol_geom())


def _writable(x) -> np.ndarray:
    return np.array(x, dtype=np.float32, order="C", copy=True)


def _project_one(image: np.ndarray, geometry: Geometry, projector: str) -> np.ndarray:
    import astra

    if projector == "cuda3d":
        sid, sino = astra.create_sino3d_gpu(_writable(image), geometry.astra_proj_geom(),
                                            geometry.astra_vol_geom())
        astra.data3d.delete(sid)
        return np.transpose(sino, (1, 0, 2))  # ASTRA (rows, views, cols) -> (views, rows, cols)
    sid, sino = astra.create_sino(_writable(image), projector_id(geometry, projector))
    astra.data2d.delete(sid)
    return sino


def _backproject_one(sino: np.ndarray, geometry: Geometry, projector: str) -> np.ndarray:
    import astra

    if projector == "cuda3d":
        vid, vol = astra.create_backprojection3d_gpu(
            _writable(np.transpose(sino, (1, 0, 2))), geometry.astra_proj_geom(),
            geometry.astra_vol_geom())
        astra.data3d.delete(vid)
        return vol
    vid, vol = astra.create_backprojection(_writable(sino), projector_id(geometry, projector))
    astra.data2d.delete(vid)
    return vol


def _host_map(fn, x, in_ndim, out_shape, geometry, projector):
    """Apply a single-item host function over any leading batch dimensions."""
    x = np.asarray(x)
    batch = x.shape[: x.ndim - in_ndim]
    flat = x.reshape((-1,) + x.shape[x.ndim - in_ndim:])
    out = np.stack([fn(item, geometry, projector) for item in flat]) if len(flat) else \
        np.zeros((0,) + out_shape, np.float32)
    return out.reshape(batch + out_shape).astype(np.float32)


def _make_primitive(name, host_fn, in_shape_of, out_shape_of):
    prim = Primitive(name)

    def impl(x, *, geometry, projector):
        in_ndim = len(in_shape_of(geometry))
        out_shape = out_shape_of(geometry)
        result = jax.ShapeDtypeStruct(x.shape[: x.ndim - in_ndim] + out_shape, jnp.float32)
        host = functools.partial(_host_map, host_fn, in_ndim=in_ndim, out_shape=out_shape,
                                 geometry=geometry, projector=projector)
        return jax.pure_callback(host, result, x.astype(jnp.float32), vmap_method="broadcast_all")

    def abstract(x, *, geometry, projector):
        in_ndim = len(in_shape_of(geometry))
        if tuple(x.shape[x.ndim - in_ndim:]) != in_shape_of(geometry):
            raise ValueError(f"{name}: input shape {x.shape} does not end in {in_shape_of(geometry)}.")
        return jax.core.ShapedArray(x.shape[: x.ndim - in_ndim] + out_shape_of(geometry), jnp.float32)

    def batch_rule(args, dims, **params):
        (x,), (d,) = args, dims
        return prim.bind(jnp.moveaxis(x, d, 0), **params), 0

    prim.def_impl(impl)
    prim.def_abstract_eval(abstract)
    mlir.register_lowering(prim, mlir.lower_fun(impl, multiple_results=False))
    batching.primitive_batchers[prim] = batch_rule
    return prim


astra_fp_p = _make_primitive("astra_fp", _project_one, lambda g: g.image_shape,
                             lambda g: g.sinogram_shape)
astra_bp_p = _make_primitive("astra_bp", _backproject_one, lambda g: g.sinogram_shape,
                             lambda g: g.image_shape)
ad.deflinear2(astra_fp_p, lambda ct, x, **params: [astra_bp_p.bind(ct, **params)])
ad.deflinear2(astra_bp_p, lambda ct, y, **params: [astra_fp_p.bind(ct, **params)])


def forward(x, geometry: Geometry, projector: str):
    """Forward-project image(s) x with ASTRA; any leading batch dimensions are kept."""
    return astra_fp_p.bind(jnp.asarray(x, jnp.float32), geometry=geometry, projector=projector)


def backward(y, geometry: Geometry, projector: str):
    """Back-project sinogram(s) y with ASTRA (the transpose of `forward`)."""
    return astra_bp_p.bind(jnp.asarray(y, jnp.float32), geometry=geometry, projector=projector)
