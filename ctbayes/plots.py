"""Figures: every image with its colour bar, written atomically as PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctbayes.io.atomic import atomic_path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_panels(path, panels: dict, suptitle: str | None = None, share_range: tuple = ()) -> Path:
    """One row of images with colour bars. `share_range` names panels drawn on one scale."""
    plt = pyplot()
    shared = [np.asarray(panels[k]) for k in share_range if k in panels]
    vmin = min(float(p.min()) for p in shared) if shared else None
    vmax = max(float(p.max()) for p in shared) if shared else None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
    for ax, (title, image) in zip(axes[0], panels.items()):
        kwargs = {"vmin": vmin, "vmax": vmax} if title in share_range else {}
        cmap = "RdBu_r" if title.lower().startswith("error") else "gray"
        if cmap == "RdBu_r":
            lim = float(np.abs(image).max()) or 1.0
            kwargs = {"vmin": -lim, "vmax": lim}
        im = ax.imshow(np.asarray(image), cmap=cmap, **kwargs)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path) -> Path:
    plt = pyplot()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
