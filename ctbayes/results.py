"""Result files: `reconstruction/mean`, and with an uncertainty pass `reconstruction/std`
and optional `reconstruction/samples`, with their provenance.

Every result records the method, its settings, the ctbayes version, the input scan, the
timings, the metrics and the learned hyperparameters (`hyper_*`, also on `std`) as
attributes of `/reconstruction`, and is written atomically.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import h5py
import numpy as np

from ctbayes import __version__
from ctbayes.errors import InputError
from ctbayes.io.atomic import atomic_path
from ctbayes.io.inputs import check_input_file


@dataclasses.dataclass
class Reconstruction:
    """A reconstruction and what made it."""

    mean: np.ndarray
    method: str
    settings: dict
    timings: dict
    std: np.ndarray | None = None
    samples: np.ndarray | None = None
    metrics: dict = dataclasses.field(default_factory=dict)
    hyperparameters: dict = dataclasses.field(default_factory=dict)

    def uncertainty_settings(self) -> dict:
        """The uncertainty pass's settings (`UncertaintyConfig.as_dict`: method, samples,
        ..., std_scale, edge_std, and the method's own config under "posterior"); {} where
        there was none. Reads the nested form, and the flat uncertainty_* keys of older
        files (their method settings then under "posterior" too)."""
        nested = self.settings.get("uncertainty")
        if isinstance(nested, dict):
            return nested
        flat = {k.removeprefix("uncertainty_"): v for k, v in self.settings.items()
                if k.startswith("uncertainty_")}
        common = ("method", "samples", "save_samples", "seed", "ensemble", "std_scale",
                  "edge_std")
        out = {k: flat.pop(k) for k in common if k in flat}
        if out:
            out["posterior"] = flat
        return out


def default_output(scan_path) -> Path:
    """SCAN.ctbayes.h5 beside the input."""
    scan_path = Path(scan_path)
    return scan_path.with_name(scan_path.stem + ".ctbayes.h5")


def _attr_value(value):
    if value is None:
        return "none"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return value


def write_result(result: Reconstruction, path, scan_path=None) -> Path:
    """Write a result file atomically."""
    path = Path(path)
    for name, array in (("image", result.mean), ("std map", result.std)):
        if array is not None and not np.all(np.isfinite(array)):
            scan = f"{scan_path}: " if scan_path is not None else ""
            raise InputError(f"{scan}the {result.method} reconstruction's {name} contains NaN or "
                             f"infinite values, so {path} was not written; check the scan's "
                             "values and geometry.")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        group = f.create_group("reconstruction")
        group.create_dataset("mean", data=np.asarray(result.mean, np.float32))
        if result.std is not None:
            std = group.create_dataset("std", data=np.asarray(result.std, np.float32))
            for key, value in result.hyperparameters.items():
                std.attrs[key] = float(value)
        if result.samples is not None:
            group.create_dataset("samples", data=np.asarray(result.samples, np.float32),
                                 compression="gzip")
        group.attrs["method"] = result.method
        group.attrs["version"] = __version__
        group.attrs["scan"] = str(scan_path) if scan_path is not None else "none"
        group.attrs["settings"] = json.dumps(result.settings, default=str)
        for key, value in result.settings.items():
            group.attrs[f"setting_{key}"] = _attr_value(value)
        for key, value in result.timings.items():
            group.attrs[f"seconds_{key}"] = float(value)
        for key, value in result.metrics.items():
            group.attrs[f"metric_{key}"] = float(value)
        for key, value in result.hyperparameters.items():
            group.attrs[f"hyper_{key}"] = float(value)
    return path


def recorded_scan_path(path) -> Path | None:
    """The scan file a result file was reconstructed from, where it still exists (as
    recorded, else by that name beside the result file); None otherwise."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            recorded = str(f["reconstruction"].attrs.get("scan", "none"))
    except (OSError, KeyError):
        return None
    if recorded == "none":
        return None
    for candidate in (Path(recorded), path.parent / Path(recorded).name):
        if candidate.is_file():
            return candidate
    return None


def read_result(path) -> Reconstruction:
    """Read a result file written by `write_result`; a file that is not one raises
    InputError."""
    path = check_input_file(path, "a ctbayes result file", missing="no such result file")
    if path.stat().st_size == 0 or not h5py.is_hdf5(path):
        raise InputError(f"{path}: not an HDF5 file (expected a ctbayes result file).")
    try:
        with h5py.File(path, "r") as f:
            if "reconstruction/mean" not in f:
                raise InputError(f"{path}: no /reconstruction/mean, not a ctbayes result file.")
            group = f["reconstruction"]
            attrs = dict(group.attrs)
            return Reconstruction(
                mean=group["mean"][()],
                std=group["std"][()] if "std" in group else None,
                samples=group["samples"][()] if "samples" in group else None,
                method=str(attrs["method"]),
                settings=json.loads(attrs["settings"]),
                timings={k[8:]: float(v) for k, v in attrs.items() if k.startswith("seconds_")},
                metrics={k[7:]: float(v) for k, v in attrs.items() if k.startswith("metric_")},
                hyperparameters={k[6:]: float(v) for k, v in attrs.items()
                                 if k.startswith("hyper_")},
            )
    except InputError:
        raise
    except (OSError, KeyError, RuntimeError, ValueError) as err:
        raise InputError(f"{path}: the result file is truncated or corrupt ({err}).") from None
