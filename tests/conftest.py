"""Shared fixtures: small geometries for every backend, and the real-data path."""

from pathlib import Path

import numpy as np
import pytest

from ctbayes.geometry import Geometry

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def small_geometry(beam: str, size: int = 32, views: int = 20) -> Geometry:
    if beam == "parallel":
        return Geometry(beam="parallel", angles=np.linspace(0, np.pi, views, endpoint=False),
                        det_count=48 * size // 32, image_shape=(size, size))
    return Geometry(beam="fanflat", angles=np.linspace(0, 2 * np.pi, views, endpoint=False),
                    det_count=48 * size // 32, det_spacing=1.5, image_shape=(size, size),
                    source_origin=4.0 * size, origin_detector=2.0 * size)


def disk_phantom(size: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    image = ((xx - size / 8) ** 2 + (yy + size / 10) ** 2 < (size / 5) ** 2).astype(np.float32)
    image[int(size * 0.6):int(size * 0.75), int(size * 0.25):int(size * 0.5)] = 0.5
    return image


@pytest.fixture(params=["parallel", "fanflat"])
def geometry(request):
    return small_geometry(request.param)


def require_shared(*parts) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data {path} is not present beside the checkout")
    return path


def run_quick_notebook(name: str, timeout: int):
    """Execute notebooks/NAME with CTBAYES_QUICK=1; return it and its code cells' text
    outputs joined by newlines. Skips when the notebook tools are not installed."""
    import os

    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    folder = Path(__file__).resolve().parents[1] / "notebooks"
    notebook = nbformat.read(folder / name, as_version=4)
    previous = os.environ.get("CTBAYES_QUICK")
    os.environ["CTBAYES_QUICK"] = "1"
    try:
        nbclient.NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(folder)}}).execute()
    finally:
        if previous is None:
            os.environ.pop("CTBAYES_QUICK", None)
        else:
            os.environ["CTBAYES_QUICK"] = previous
    text = "\n".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code"
                     for o in c.get("outputs", []))
    return notebook, text
