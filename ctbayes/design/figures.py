"""Design figures: PSNR against the number of angles per strategy, chosen angles on a polar plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctbayes.plots import pyplot, save_figure


def psnr_curves(runs: dict, path, title: str | None = None) -> Path:
    """PSNR (dB) against the number of measured angles, one line per strategy."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, run in runs.items():
        ax.plot(run.num_angles, run.psnr, marker="o", ms=3, label=name)
    ax.set_xlabel("number of angles")
    ax.set_ylabel("PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path)


def polar_angles(run, path, title: str | None = None) -> Path:
    """The chosen angles of a run on a polar plot, the radius being the step of acquisition."""
    plt = pyplot()
    fig = plt.figure(figsize=(4.5, 4.5))
    ax = fig.add_subplot(projection="polar")
    angles = np.asarray(run.candidate_angles)
    for step, new in enumerate(run.new_views):
        new = np.asarray(new, int)
        colour = "k" if step == 0 else plt.cm.viridis(step / max(len(run.new_views) - 1, 1))
        ax.scatter(angles[new], np.full(len(new), step + 1), s=14, color=colour)
        for a in angles[new]:
            ax.plot([a, a], [0, step + 1], color=colour, lw=0.6, alpha=0.6)
    ax.set_yticklabels([])
    ax.set_title(title or f"{run.strategy}: chosen angles (radius: step)")
    fig.tight_layout()
    return save_figure(fig, path)


def design_figures(runs: dict, directory) -> list[Path]:
    """psnr.png for all runs and angles_<strategy>.png for each."""
    directory = Path(directory)
    paths = [psnr_curves(runs, directory / "psnr.png")]
    paths += [polar_angles(run, directory / f"angles_{name}.png") for name, run in runs.items()]
    return paths
