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


def uncertainty_figures(scan, result, directory) -> list[Path]:
    """`std.png`: the image and its std map (and |error| with a truth); with a truth also
    `error_vs_std.png` (per std decile, the RMSE of the pixels against their mean std:
    a calibrated std lies on the line y = x) and `calibration.png` (nominal against observed
    coverage of the Gaussian credible intervals)."""
    from ctbayes import metrics
    from ctbayes.plots import pyplot, save_figure

    directory = Path(directory)
    label = result.uncertainty_settings().get("method", "posterior")
    panels = {"reconstruction": result.mean, f"std ({label})": result.std}
    truth = scan.ground_truth
    if truth is not None:
        panels["|error|"] = np.abs(np.asarray(result.mean) - truth)
    paths = [save_panels(directory / "std.png", panels)]
    if truth is None:
        return paths
    plt = pyplot()
    std = np.asarray(result.std, np.float64).ravel()
    err = np.abs(np.asarray(result.mean, np.float64) - truth).ravel()
    edges = np.quantile(std, np.linspace(0, 1, 11))
    which = np.clip(np.searchsorted(edges, std, side="right") - 1, 0, 9)
    centres = [std[which == b].mean() for b in range(10) if np.any(which == b)]
    rmse = [np.sqrt(np.mean(err[which == b] ** 2)) for b in range(10) if np.any(which == b)]
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.scatter(std, err, s=2, alpha=0.2, color="gray", label="pixels")
    ax.plot(centres, rmse, "o-", color="C0", label="RMSE per std decile")
    top = max(std.max(), max(rmse))
    ax.plot([0, top], [0, top], "k--", lw=1, label="calibrated (RMSE = std)")
    ax.set_xlabel("posterior std")
    ax.set_ylabel("|error|")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(save_figure(fig, directory / "error_vs_std.png"))
    levels, observed = metrics.calibration_curve(truth, result.mean, result.std)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot(levels, observed, "o-", label=label)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="ideal")
    ax.set_xlabel("nominal coverage")
    ax.set_ylabel("observed coverage")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(save_figure(fig, directory / "calibration.png"))
    return paths
