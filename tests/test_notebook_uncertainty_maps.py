"""notebooks/uncertainty_maps.ipynb runs in its quick setting (a small U-Net, few iterations
and samples; about 2 minutes on 2 cores), and what it prints holds: on the shipped
Shepp-Logan scan the Laplace std scores a higher log-likelihood than the best constant std
and than DIP-MCDO, and on HTC2022 (where present) it scores against the reference FBP and
predicts the held-out views. A file of its own, so that pytest-xdist (one file per worker)
runs it beside the other uncertainty tests."""

import re

from tests.conftest import SHARED_DATA, run_quick_notebook

SCORES = re.compile(r"^(laplace|mcdo)\s+PSNR ([\d.]+) dB\s+LL (-?[\d.]+)\s+constant-std LL (-?[\d.]+)",
                    re.M)


def test_uncertainty_maps_notebook_runs_and_laplace_beats_the_baselines():
    notebook, text = run_quick_notebook("uncertainty_maps.ipynb", timeout=900)
    scores = {method: tuple(map(float, rest)) for method, *rest in SCORES.findall(text)}
    assert set(scores) == {"laplace", "mcdo"}, text
    psnr, laplace_ll, constant_ll = scores["laplace"]
    assert psnr > 25, scores
    assert laplace_ll > constant_ll + 0.2, scores  # the std map is worth more than its mean
    assert laplace_ll > scores["mcdo"][1], scores
    real = (SHARED_DATA / "htc2022" / "htc2022_ta_full.mat").exists()
    if real:
        assert "inside the object" in text and "the 60 held-out views" in text
    images = sum("image/png" in o.get("data", {}) for c in notebook.cells
                 if c.cell_type == "code" for o in c.get("outputs", []))
    assert images >= (4 if real else 2)  # maps and calibration plots of each scan
