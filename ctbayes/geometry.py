"""Acquisition geometry: one object that yields the ASTRA and ODL geometries.

Conventions (those of ASTRA, which every backend follows):

- An image is a (rows, cols) array; column index grows with x, row index 0 is the top
  (largest y). A sinogram made by ASTRA at the stored angles from image X reconstructs to X
  as stored, with no transpose or flip.
- Angles are in radians here; scan files store degrees.
- Lengths (pixel size, detector spacing, distances) share one unit, e.g. millimetres.
- The image is centred on the rotation axis.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ctbayes.errors import InputError

BEAMS_2D = ("parallel", "fanflat")
BEAMS_3D = ("parallel3d", "cone")
BEAMS = BEAMS_2D + BEAMS_3D


@dataclasses.dataclass(frozen=True)
class Geometry:
    """A CT geometry.

    beam: "parallel" or "fanflat" (2D); "parallel3d" or "cone" (3D, GPU only).
    angles: projection angles in radians, one per view.
    det_count: detector pixels per row; det_spacing: their width.
    image_shape: (rows, cols) in 2D, (slices, rows, cols) in 3D; pixel_size: voxel width.
    source_origin, origin_detector: distances for divergent beams (fanflat, cone).
    det_rows, det_row_spacing: detector rows for 3D beams.
    """

    beam: str
    angles: tuple[float, ...]
    det_count: int
    image_shape: tuple[int, ...]
    det_spacing: float = 1.0
    pixel_size: float = 1.0
    source_origin: float | None = None
    origin_detector: float | None = None
    det_rows: int | None = None
    det_row_spacing: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "angles", tuple(float(a) for a in np.ravel(self.angles)))
        object.__setattr__(self, "image_shape", tuple(int(s) for s in self.image_shape))
        if self.beam not in BEAMS:
            raise InputError(f"Unknown beam type {self.beam!r}; expected one of {', '.join(BEAMS)}.")
        if not self.angles:
            raise InputError("The geometry has no projection angles.")
        if not all(math.isfinite(a) for a in self.angles):
            raise InputError("The projection angles contain NaN or infinite values.")
        if int(self.det_count) < 2:
            raise InputError(f"The detector needs at least 2 pixels for a reconstruction, got "
                             f"{self.det_count}.")
        dims = 3 if self.is_3d else 2
        if len(self.image_shape) != dims or min(self.image_shape) < 1:
            raise InputError(
                f"A {self.beam} geometry needs a {dims}D image shape of positive sizes, "
                f"got {self.image_shape}."
            )
        for name in ("det_spacing", "pixel_size"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise InputError(f"The geometry's {name} must be positive and finite, got {value}.")
        if self.beam in ("fanflat", "cone"):
            for name in ("source_origin", "origin_detector"):
                value = getattr(self, name)
                if value is None or not (math.isfinite(value) and value > 0):
                    raise InputError(
                        f"A {self.beam} geometry needs a positive {name} distance, got {value}."
                    )
        if self.is_3d and (self.det_rows is None or self.det_rows < 1):
            raise InputError(f"A {self.beam} geometry needs det_rows >= 1, got {self.det_rows}.")

    # -- shapes ---------------------------------------------------------------------------
    @property
    def is_3d(self) -> bool:
        return self.beam in BEAMS_3D

    @property
    def num_views(self) -> int:
        return len(self.angles)

    @property
    def angles_array(self) -> np.ndarray:
        return np.asarray(self.angles, dtype=np.float64)

    @property
    def sinogram_shape(self) -> tuple[int, ...]:
        if self.is_3d:
            return (self.num_views, self.det_rows, self.det_count)
        return (self.num_views, self.det_count)

    @property
    def row_spacing(self) -> float:
        return self.det_row_spacing or self.det_spacing

    def with_angles(self, angles) -> "Geometry":
        """The same geometry at other angles (radians): for subsets and candidate views."""
        return dataclasses.replace(self, angles=tuple(np.ravel(angles)))

    def with_image(self, image_shape, pixel_size=None) -> "Geometry":
        """The same scanner with another reconstruction grid; by default same field of view."""
        if pixel_size is None:
            pixel_size = self.pixel_size * self.image_shape[-1] / image_shape[-1]
        return dataclasses.replace(self, image_shape=tuple(image_shape), pixel_size=pixel_size)

    # -- ASTRA ----------------------------------------------------------------------------
    def astra_vol_geom(self) -> dict:
        import astra

        p = self.pixel_size
        if self.is_3d:
            d, h, w = self.image_shape
            return astra.create_vol_geom(h, w, d, -w * p / 2, w * p / 2, -h * p / 2, h * p / 2,
                                         -d * p / 2, d * p / 2)
        h, w = self.image_shape
        return astra.create_vol_geom(h, w, -w * p / 2, w * p / 2, -h * p / 2, h * p / 2)

    def astra_proj_geom(self) -> dict:
        import astra

        a = self.angles_array
        if self.beam == "parallel":
            return astra.create_proj_geom("parallel", self.det_spacing, self.det_count, a)
        if self.beam == "fanflat":
            return astra.create_proj_geom("fanflat", self.det_spacing, self.det_count, a,
                                          self.source_origin, self.origin_detector)
        if self.beam == "parallel3d":
            return astra.create_proj_geom("parallel3d", self.det_spacing, self.row_spacing,
                                          self.det_rows, self.det_count, a)
        return astra.create_proj_geom("cone", self.det_spacing, self.row_spacing, self.det_rows,
                                      self.det_count, a, self.source_origin, self.origin_detector)

    # -- ODL ------------------------------------------------------------------------------
    def odl_space(self):
        """ODL reconstruction space. ODL's array is flipud(astra_image).T (axis 0 is x)."""
        import odl

        if self.is_3d:
            raise InputError("ODL baselines are available for 2D geometries only.")
        h, w = self.image_shape
        p = self.pixel_size
        return odl.uniform_discr([-w * p / 2, -h * p / 2], [w * p / 2, h * p / 2], (w, h),
                                 dtype="float32")

    def odl_geometry(self):
        """ODL geometry equal to the ASTRA one: same angles, same detector direction."""
        import odl
        import odl.applications.tomo as tomo

        if self.is_3d:
            raise InputError("ODL baselines are available for 2D geometries only.")
        apart = odl.nonuniform_partition(self.angles_array) if self.num_views > 1 else \
            odl.uniform_partition(self.angles[0] - 0.5, self.angles[0] + 0.5, 1)
        half = self.det_count * self.det_spacing / 2
        dpart = odl.uniform_partition(-half, half, self.det_count)
        if self.beam == "parallel":
            return tomo.Parallel2dGeometry(apart, dpart)
        return tomo.FanBeamGeometry(apart, dpart, src_radius=self.source_origin,
                                    det_radius=self.origin_detector)

    # -- serialisation --------------------------------------------------------------------
    def describe(self) -> str:
        deg = np.degrees(self.angles_array)
        text = (f"{self.beam} beam, {self.num_views} views from {deg.min():.2f} to "
                f"{deg.max():.2f} deg, {self.det_count} detector pixels of {self.det_spacing:g}, "
                f"image {'x'.join(map(str, self.image_shape))} with pixel size {self.pixel_size:g}")
        if self.source_origin is not None:
            text += f", source-origin {self.source_origin:g}, origin-detector {self.origin_detector:g}"
        return text


def odl_to_astra_image(arr: np.ndarray) -> np.ndarray:
    """Convert an ODL (x, y) array to ASTRA's (rows, cols) image layout."""
    return np.ascontiguousarray(np.flipud(np.asarray(arr).T))


def astra_to_odl_image(img: np.ndarray) -> np.ndarray:
    """Convert an ASTRA (rows, cols) image to ODL's (x, y) array layout."""
    return np.ascontiguousarray(np.flipud(np.asarray(img)).T)
