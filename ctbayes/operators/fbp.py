"""Filtered back-projection through ODL (`odl.applications.tomo.fbp_op`).

ODL is imported here only: it changes global NumPy print options when imported. ODL's image
axes are (x, y); results are converted to ASTRA's (rows, cols) layout.
"""

from __future__ import annotations

import functools

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
    ray = tomo.RayTransform(geometry.odl_space(), geometry.odl_geometry(), impl=impl)
    op = tomo.fbp_op(ray, filter_type=filter, frequency_scaling=frequency_scaling)
    if _is_fan_short_scan(geometry):
        op = op * tomo.parker_weighting(ray)
    return op


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
    """FBP reconstruction of a (views, det) sinogram, as an ASTRA-layout (rows, cols) image."""
    op = fbp_operator(geometry, filter, float(frequency_scaling))
    result = op(np.ascontiguousarray(sinogram, dtype=np.float32))
    return odl_to_astra_image(np.asarray(result.data)).astype(np.float32)
