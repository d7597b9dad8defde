"""Filtered back-projection through ODL (`odl.applications.tomo.fbp_op`).

ODL is imported here only: it changes global NumPy print options when imported. ODL's image
axes are (x, y); results are converted to ASTRA's (rows, cols) layout.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np

from ctbayes.errors import InputError
from ctbayes.geometry import Geometry, odl_to_astra_image

FILTERS = ("Ram-Lak", "Shepp-Logan", "Cosine", "Hamming", "Hann")


@functools.lru_cache(maxsize=8)
def fbp_operator(geometry: Geometry, filter: str = "Ram-Lak", frequency_scaling: float = 1.0):
    """The ODL FBP operator for a 2D geometry, with Parker weights for a fan-beam short scan."""
    import odl.applications.tomo as tomo

    from ctbayes.operators.astra_backend import cuda_available

    if geometry.is_3d:
        raise InputError("FBP is available for 2D geometries only.")
    if filter not in FILTERS:
        raise InputError(f"Unknown FBP filter {filter!r}; expected one of {', '.join(FILTERS)}.")
    if not 0 < frequency_scaling <= 1:
        raise InputError(f"The FBP frequency scaling must lie in (0, 1], got {frequency_scaling}.")
    impl = "astra_cuda" if cuda_available() else "astra_cpu"
    angles = geometry.angles_array
    if len(np.unique(angles)) < len(angles):
        raise InputError(f"FBP needs distinct projection angles, but {len(angles)} views have "
                         f"only {len(np.unique(angles))} different angles; use --method dip "
                         "or drop the repeated views.")
    odl_geometry = geometry.odl_geometry()
    ray = tomo.RayTransform(geometry.odl_space(), odl_geometry, impl=impl)
    if odl_geometry.motion_partition.is_uniform:
        op = tomo.fbp_op(ray, filter_type=filter, frequency_scaling=frequency_scaling)
    else:
        # ODL's filter needs a uniform sinogram space, but it acts on each view alone and
        # depends on the angles only through the arc length: take it from a uniform twin
        # over the same arc, and back-project with the true (cell-weighted) angles
        import odl

        part = odl_geometry.motion_partition
        twin_part = odl.uniform_partition(part.min_pt, part.max_pt, part.shape)
        twin = tomo.RayTransform(geometry.odl_space(), _with_motion(odl_geometry, twin_part),
                                 impl=impl)
        filt = tomo.fbp_filter_op(twin, filter_type=filter, frequency_scaling=frequency_scaling)
        op = ray.adjoint * _Relabel(filt.range, ray.range) * filt * _Relabel(ray.range, filt.domain)
    if _is_fan_short_scan(geometry):
        op = op * tomo.parker_weighting(ray)
    return op


def _with_motion(odl_geometry, motion_partition):
    """The same 2D ODL geometry with other angles."""
    import odl.applications.tomo as tomo

    if isinstance(odl_geometry, tomo.Parallel2dGeometry):
        return tomo.Parallel2dGeometry(motion_partition, odl_geometry.det_partition)
    return tomo.FanBeamGeometry(motion_partition, odl_geometry.det_partition,
                                src_radius=odl_geometry.src_radius,
                                det_radius=odl_geometry.det_radius)


def _Relabel(domain, range_):
    """The identity on arrays between two sinogram spaces of the same shape."""
    import odl

    class Relabel(odl.Operator):
        def __init__(self):
            super().__init__(domain, range_, linear=True)

        def _call(self, x):
            return range_.element(x.data)

    return Relabel()


def _is_fan_short_scan(geometry: Geometry) -> bool:
    """A fan-beam arc of at least pi plus the fan angle but short of a full turn."""
    if geometry.beam != "fanflat" or geometry.num_views < 2:
        return False
    a = np.sort(geometry.angles_array)
    arc = a[-1] - a[0] + np.median(np.diff(a))
    half_width = geometry.det_count * geometry.det_spacing / 2
    fan = 2 * np.arctan(half_width / (geometry.source_origin + geometry.origin_detector))
    return np.pi + fan <= arc + 1e-6 < 2 * np.pi - 1e-6


def fbp(sinogram, geometry: Geometry, filter: str = "Ram-Lak", frequency_scaling: float = 1.0):
    """FBP reconstruction of a (views, det) sinogram, as an ASTRA-layout (rows, cols) image.

    The views may come in any order and with any spacing (e.g. the angles a design loop has
    chosen): they are sorted, and unevenly spaced views are weighted by their share of the arc.
    """
    order = np.argsort(geometry.angles_array, kind="stable")
    if np.any(order != np.arange(len(order))):
        geometry = geometry.with_angles(geometry.angles_array[order])
        sinogram = np.asarray(sinogram)[order]
    op = fbp_operator(geometry, filter, float(frequency_scaling))
    with warnings.catch_warnings():  # ODL's advice to use CUDA for large images: we do, where present
        warnings.filterwarnings("ignore", "The 'astra_cpu' backend may be too slow")
        result = op(np.ascontiguousarray(sinogram, dtype=np.float32))
    return odl_to_astra_image(np.asarray(result.data)).astype(np.float32)


def noise_realisation(sinogram, geometry: Geometry, filter: str = "Ram-Lak",
                      frequency_scaling: float = 1.0):
    """One draw of the noise in `fbp(sinogram, geometry)`, from the data alone: half the
    difference of the FBPs of the even and of the odd views (in angle order).

    With independent noise per view the two halves' noise is independent and their mean is
    the full FBP, so (FBP_even - FBP_odd) / 2 has the full FBP's noise statistics, while the
    object cancels up to the halves' coarser angular sampling (which shows at sharp edges).
    Used to score uncertainty against a reference FBP that is itself a noisy measurement.
    """
    angles = geometry.angles_array
    if len(angles) < 4:
        raise InputError(f"Splitting views into two halves needs at least 4 views, got {len(angles)}.")
    order = np.argsort(angles, kind="stable")[: len(angles) // 2 * 2]
    sinogram = np.asarray(sinogram)
    halves = [fbp(sinogram[part], geometry.with_angles(angles[part]), filter, frequency_scaling)
              for part in (order[0::2], order[1::2])]
    return (halves[0] - halves[1]) / 2


def reference_noise_realisation(sinogram, geometry: Geometry, reference, filter: str = "Ram-Lak"):
    """One draw of the noise in `reference`, an FBP of all of `sinogram` (e.g. a publisher's),
    in the reference's units: `noise_realisation` of the residual sinogram - A reference.

    Removing the object first keeps it from leaking into the draw through the half data's
    coarser angular sampling (the split of raw data holds noticeably more variance than the
    noise alone); the reference's units are matched to ours by a least-squares scale. filter:
    the FBP filter closest to the reference's."""
    from ctbayes.metrics import fit_scale
    from ctbayes.operators import make_ray_transform

    scale = fit_scale(fbp(sinogram, geometry, filter), reference)  # ours * scale ~ the reference
    projected = np.asarray(make_ray_transform(geometry, "astra")(reference / scale))
    return noise_realisation(np.asarray(sinogram) - projected, geometry, filter) * scale
