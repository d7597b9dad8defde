"""The figures `ctbayes reconstruct --figures DIR` writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctbayes.plots import save_panels


def reconstruction_figures(scan, result, directory) -> list[Path]:
    """Ground truth (if any), FBP, the method's image and its error map, with colour bars."""
    from ctbayes.operators.fbp import fbp

    directory = Path(directory)
    panels = {}
    if scan.ground_truth is not None:
        panels["ground truth"] = scan.ground_truth
    if result.method != "fbp":
        panels["FBP"] = fbp(scan.sinogram, scan.geometry)
    panels[result.method.upper()] = result.mean
    if scan.ground_truth is not None:
        panels[f"error ({result.method.upper()} - truth)"] = np.asarray(result.mean) - scan.ground_truth
    shared = tuple(k for k in panels if not k.startswith("error"))
    title = ", ".join(f"{k} {v:.3g}" for k, v in result.metrics.items() if k in ("psnr", "ssim"))
    return [save_panels(directory / "reconstruction.png", panels, suptitle=title or None,
                        share_range=shared)]
