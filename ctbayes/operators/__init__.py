"""Ray transforms (ASTRA callback and sparse-matrix backends) and filtered back-projection."""

from ctbayes.operators.ray_transform import RayTransform, make_ray_transform

__all__ = ["RayTransform", "make_ray_transform"]
