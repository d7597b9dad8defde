"""Protocol calibration files: a std calibration kept with the protocol it holds for.

A calibration learned by `ctbayes calibrate` (a std scale and an edge std, `calibration`, or
a split-conformal scale, `conformal`) is only right for scans like the ones it was learned
on: the same scanner geometry, number of views and angular range, image grid, and the same
reconstruction and posterior. `ctbayes calibrate ... -o PROTOCOL.json` writes it as a small
JSON file recording all of these; `ctbayes reconstruct SCAN --calibration PROTOCOL.json`
checks the scan and the settings against it before any work and applies it, or refuses.

The file (format `FORMAT`, version `VERSION`)::

    {"format": "ctbayes-protocol-calibration", "version": 1, "ctbayes": "0.1.0",
     "protocol": {"beam": "fanflat", "det_count": 560, "det_spacing": 0.2,
                  "source_origin": 410.66, "origin_detector": 143.08,
                  "image_shape": [64, 64], "pixel_size": 1.18656,
                  "views": 60, "angular_range_degrees": 354.0,
                  "method": "dip", "uncertainty": "laplace", "prior": "matern",
                  "edge_features": false, "ensemble": 1},
     "calibration": {"kind": "scale-edge", "std_scale": 1.72, "edge_std": 0.14},
     "scans": 2, "pixels": 5200}

kind "conformal" adds alpha, quantile (of |z| over the calibration pixels) and coverage
(the guaranteed (n+1)-rank coverage for exchangeable pixels, `conformal.coverage`), and its
std_scale is `conformal.conformal_std_scale(quantile, alpha)`, edge_std 0. The angular range
is the span from the first to the last view; it matches to within half a view step.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from ctbayes import __version__
from ctbayes.errors import InputError
from ctbayes.io.atomic import atomic_path

FORMAT = "ctbayes-protocol-calibration"
VERSION = 1
KINDS = ("scale-edge", "conformal")
GEOMETRY_KEYS = ("beam", "det_count", "det_spacing", "source_origin", "origin_detector",
                 "image_shape", "pixel_size", "views", "angular_range_degrees")
SETTING_KEYS = ("method", "uncertainty", "prior", "edge_features", "discrepancy", "ensemble")
RELATIVE_TOLERANCE = 1e-4  # lengths written to JSON and read back, from different imports


def geometry_protocol(geometry) -> dict:
    """The acquisition part of a protocol: beam, detector, distances, grid, views, range."""
    angles = np.degrees(np.asarray(geometry.angles_array, np.float64))
    return {"beam": geometry.beam, "det_count": int(geometry.det_count),
            "det_spacing": float(geometry.det_spacing),
            "source_origin": None if geometry.source_origin is None
            else float(geometry.source_origin),
            "origin_detector": None if geometry.origin_detector is None
            else float(geometry.origin_detector),
            "image_shape": [int(s) for s in geometry.image_shape],
            "pixel_size": float(geometry.pixel_size), "views": int(geometry.num_views),
            "angular_range_degrees": float(angles.max() - angles.min())}


def settings_protocol(method: str, uncertainty: str, posterior: dict, ensemble: int) -> dict:
    """The reconstruction part of a protocol: what the std map comes from. The prior and the
    per-pixel feature groups (edge features, discrepancy) are Laplace's, read from its
    settings `posterior`; other posteriors record None and False."""
    laplace = uncertainty == "laplace"
    return {"method": method, "uncertainty": uncertainty,
            "prior": posterior.get("prior") if laplace else None,
            "edge_features": bool(posterior.get("edge_features", False)) if laplace else False,
            "discrepancy": bool(posterior.get("discrepancy", False)) if laplace else False,
            "ensemble": int(ensemble)}


def result_protocol(result, geometry) -> dict:
    """The protocol of a result file (`results.Reconstruction`) of a scan with `geometry`."""
    u = result.uncertainty_settings()
    return geometry_protocol(geometry) | settings_protocol(
        result.method, u.get("method", "none"), u.get("posterior") or {}, u.get("ensemble", 1))


def config_protocol(geometry, config) -> dict:
    """The protocol a `reconstruct.ReconstructConfig` would run a scan of `geometry` under."""
    u = config.uncertainty
    method = u.method if config.method == "dip" else "none"
    posterior = dataclasses.asdict(u.posterior) if dataclasses.is_dataclass(u.posterior) else {}
    if method == "laplace" and u.posterior is None:  # the method's defaults
        from ctbayes.laplace import LaplaceConfig

        posterior = dataclasses.asdict(LaplaceConfig())
    return geometry_protocol(geometry) | settings_protocol(config.method, method, posterior,
                                                           u.ensemble)


def differences(expected: dict, actual: dict, view_step: float = 0.0,
                where: str = "the calibration") -> list[str]:
    """'KEY A here, B in the calibration' for each protocol key that differs (lengths to
    RELATIVE_TOLERANCE, the angular range to half a view step)."""
    found = []
    for key in GEOMETRY_KEYS + SETTING_KEYS:
        a, b = expected.get(key), actual.get(key)
        if key == "angular_range_degrees" and a is not None and b is not None:
            same = abs(a - b) <= max(0.5 * view_step, 1e-6)
        elif isinstance(a, float) and isinstance(b, (int, float)):
            same = math.isclose(a, b, rel_tol=RELATIVE_TOLERANCE)
        else:
            same = a == b
        if not same:
            found.append(f"{key} {_show(b)} here, {_show(a)} in {where}")
    return found


def _show(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return "x".join(map(str, value))
    return str(value)


def write_protocol(path, protocol: dict, calibration: dict, scans: int, pixels: int) -> Path:
    """Write a protocol calibration file atomically (the layout in the module docstring)."""
    document = {"format": FORMAT, "version": VERSION, "ctbayes": __version__,
                "protocol": protocol, "calibration": calibration,
                "scans": int(scans), "pixels": int(pixels)}
    _check(document, Path(path))
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(document, indent=1) + "\n")
    return path


def read_protocol(path) -> dict:
    """Read and check a protocol calibration file; InputError, one sentence, for a missing,
    unreadable, corrupt or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such calibration file.")
    try:
        document = json.loads(path.read_text())
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file, expected a ctbayes calibration "
                         "(JSON).") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: corrupt JSON ({err.msg} at line {err.lineno}), expected a "
                         "ctbayes calibration file.") from None
    _check(document, path)
    return document


def _check(document, path: Path) -> None:
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise InputError(f"{path}: not a ctbayes calibration file (no \"format\": \"{FORMAT}\").")
    if document.get("version") != VERSION:
        raise InputError(f"{path}: calibration format version {document.get('version')!r} is "
                         f"not supported; this ctbayes reads version {VERSION}.")
    protocol, calibration = document.get("protocol"), document.get("calibration")
    keys = GEOMETRY_KEYS + SETTING_KEYS
    if not isinstance(protocol, dict) or any(k not in protocol for k in keys):
        raise InputError(f"{path}: the calibration's protocol is missing or incomplete.")
    if not isinstance(calibration, dict) or calibration.get("kind") not in KINDS:
        raise InputError(f"{path}: the calibration's kind is missing or not one of "
                         f"{', '.join(KINDS)}.")
    scale, edge = calibration.get("std_scale"), calibration.get("edge_std", 0.0)
    if not (_number(scale) and 0 < scale < math.inf and _number(edge) and 0 <= edge < math.inf):
        raise InputError(f"{path}: the calibration's std_scale {scale!r} or edge_std {edge!r} "
                         "is not a usable number.")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_scan(document: dict, geometry, config, path) -> tuple[float, float]:
    """(std_scale, edge_std) of a calibration file for a scan of `geometry` reconstructed
    with `config`; InputError naming the first differences where the protocol does not match."""
    if config.method != "dip" or config.uncertainty.method == "none":
        raise InputError(f"{path}: a calibration applies to a std map; reconstruct with the "
                         "dip method and an uncertainty method.")
    found = differences(document["protocol"], config_protocol(geometry, config),
                        _view_step(geometry))
    if found:
        raise InputError(f"{path}: the calibration is for another protocol ({'; '.join(found[:3])}"
                         f"{'; ...' if len(found) > 3 else ''}).")
    calibration = document["calibration"]
    return float(calibration["std_scale"]), float(calibration.get("edge_std", 0.0))


def _view_step(geometry) -> float:
    angles = np.degrees(np.sort(np.asarray(geometry.angles_array)))
    return float(np.median(np.diff(angles))) if len(angles) > 1 else 0.0


def learn_protocol(result_paths, alpha: float | None = None) -> dict:
    """The protocol calibration learned from result files of scans with a truth or reference
    FBP (each scan file where the result recorded it, or beside it): the protocol they share
    (InputError where they differ) and either the std scale and edge std
    (`calibration.fit_scale_and_edge`, allowing for a reference's own noise) or, with alpha,
    the split-conformal scale at level 1 - alpha (`conformal`). Returns the arguments of
    `write_protocol` as a dict, with "z_rms" per result (unscaled) for the report."""
    from ctbayes.calibration import calibration_target, fit_scale_and_edge
    from ctbayes.conformal import (abs_z_scores, conformal_quantile, conformal_std_scale,
                                   coverage)
    from ctbayes.io.hdf5 import read_scan
    from ctbayes.metrics import z_rms
    from ctbayes.results import read_result, recorded_scan_path

    protocols, targets = [], []
    for path in map(Path, result_paths):
        result = read_result(path)
        scan_path = recorded_scan_path(path)
        if scan_path is None:
            raise InputError(f"{path}: its scan file was not found (where the result recorded "
                             "it, nor beside it); a protocol calibration needs it for the "
                             "geometry and the truth.")
        scan = read_scan(scan_path)
        target = calibration_target(result, scan)
        if target is None:
            raise InputError(f"{path}: it has no std map, or its scan {scan_path} has no ground "
                             "truth or reference FBP on the result's grid, to calibrate on.")
        protocols.append((path, result_protocol(result, scan.geometry), _view_step(scan.geometry)))
        targets.append(target)
    first_path, first, _ = protocols[0]
    for path, protocol, step in protocols[1:]:
        found = differences(first, protocol, step, where=str(first_path))
        if found:
            raise InputError(f"{path}: the results come from different protocols "
                             f"({'; '.join(found[:3])}); calibrate each protocol separately.")
    pixels = sum(int(np.count_nonzero((np.ones(np.shape(m), bool) if k is None else k) & (s > 0)))
                 for _, m, s, k, _ in targets)
    if alpha is None:
        scale, edge = fit_scale_and_edge(targets)
        calibration = {"kind": "scale-edge", "std_scale": scale, "edge_std": edge}
    else:
        scores = np.concatenate([abs_z_scores(t, m, s, k) for t, m, s, k, _ in targets])
        quantile = conformal_quantile(scores, alpha)
        calibration = {"kind": "conformal", "std_scale": conformal_std_scale(quantile, alpha),
                       "edge_std": 0.0, "alpha": float(alpha), "quantile": quantile,
                       "coverage": coverage(scores.size, alpha)}
    inside = [(slice(None),) if k is None else k for _, _, _, k, _ in targets]
    return {"protocol": first, "calibration": calibration, "scans": len(targets),
            "pixels": pixels,
            "z_rms": [z_rms(t[i], m[i], s[i]) for (t, m, s, _, _), i in zip(targets, inside)]}


def apply_calibration(config, geometry):
    """config (a `reconstruct.ReconstructConfig`) with the std scale and edge std of its
    uncertainty's calibration file, which must match the scan's geometry and the settings;
    InputError (one sentence) otherwise, or where std_scale or edge_std were also given."""
    import dataclasses

    u = config.uncertainty
    path = u.calibration
    document = read_protocol(path)
    if u.std_scale != 1.0 or u.edge_std != 0.0:
        raise InputError(f"{path}: give either a calibration file or --std-scale/--edge-std, "
                         "not both.")
    scale, edge = check_scan(document, geometry, config, path)
    return dataclasses.replace(config, uncertainty=dataclasses.replace(
        u, std_scale=scale, edge_std=edge))
