"""A measured (or simulated) scan: sinogram, geometry and what is known about the truth."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from ctbayes.errors import InputError
from ctbayes.geometry import Geometry

FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclasses.dataclass(frozen=True)
class Scan:
    """Line-integral sinogram (views, detector) or (views, rows, cols) with its geometry.

    ground_truth: the true image where known (simulations), in the geometry's image layout.
    noise_std: standard deviation of the additive measurement noise where known.
    references: named reference images that are not the truth (e.g. a publisher's FBP or
    segmentation), each on the geometry's image grid.
    source: where the scan came from, used in error messages.
    provenance: how the scan was made, as attributes of numbers and strings (e.g. the
    rotation centre of an import), stored with it in the scan file.
    """

    sinogram: np.ndarray
    geometry: Geometry
    ground_truth: np.ndarray | None = None
    noise_std: float | None = None
    references: dict = dataclasses.field(default_factory=dict)
    source: str = "<memory>"
    provenance: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        sino = np.asarray(self.sinogram, dtype=np.float32)
        object.__setattr__(self, "sinogram", sino)
        where = f"{self.source}: " if self.source != "<memory>" else ""
        if sino.size == 0:
            raise InputError(f"{where}the sinogram is empty.")
        if sino.shape != self.geometry.sinogram_shape:
            raise InputError(
                f"{where}the sinogram has shape {sino.shape} but the geometry "
                f"({self.geometry.num_views} angles, {self.geometry.det_count} detector pixels) "
                f"expects {self.geometry.sinogram_shape}."
            )
        if not np.all(np.isfinite(sino)):
            raise InputError(f"{where}the sinogram contains NaN or infinite values.")
        largest = float(np.max(np.abs(sino)))
        if largest * largest * sino.size > FLOAT32_MAX:
            raise InputError(
                f"{where}the sinogram's values (up to {largest:.3g}) are too large for float32 "
                f"arithmetic: their sum of squares would overflow; rescale the data (line "
                f"integrals are usually below 100).")
        if self.ground_truth is not None:
            gt = np.asarray(self.ground_truth, dtype=np.float32)
            if gt.shape != self.geometry.image_shape:
                raise InputError(
                    f"{where}the ground truth has shape {gt.shape}, expected the image shape "
                    f"{self.geometry.image_shape}."
                )
            if not np.all(np.isfinite(gt)):
                raise InputError(f"{where}the ground truth contains NaN or infinite values.")
            object.__setattr__(self, "ground_truth", gt)
        if self.noise_std is not None and not (np.isfinite(self.noise_std) and self.noise_std >= 0):
            raise InputError(f"{where}the noise level must be a non-negative number, got {self.noise_std}.")
        refs = {}
        for name, image in self.references.items():
            image = np.asarray(image, dtype=np.float32)
            if image.shape != self.geometry.image_shape:
                raise InputError(
                    f"{where}the reference image {name!r} has shape {image.shape}, expected "
                    f"{self.geometry.image_shape}."
                )
            refs[name] = image
        object.__setattr__(self, "references", refs)

    def subset(self, views) -> "Scan":
        """The scan restricted to the given view indices (angular subsampling)."""
        views = np.asarray(views)
        return dataclasses.replace(
            self,
            sinogram=self.sinogram[views],
            geometry=self.geometry.with_angles(self.geometry.angles_array[views]),
        )


def data_fingerprint(geometry: Geometry, *arrays) -> str:
    """A SHA-256 hex digest of a geometry and arrays (each as float32; None skipped): what a
    checkpoint or log must match to be resumed on the same data."""
    h = hashlib.sha256(repr(geometry).encode())
    for array in arrays:
        if array is not None:
            h.update(np.ascontiguousarray(array, np.float32).tobytes())
    return h.hexdigest()
