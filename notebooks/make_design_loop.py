"""Generate design_loop.ipynb (outputs stripped): `python notebooks/make_design_loop.py`."""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    new_markdown_cell(
        "# Adaptive angle selection: the experimental-design loop\n\n"
        "Retrospective Bayesian experimental design on a dense simulated scan (after Barbano et "
        "al., 2022): every view is a candidate; the loop starts from a few equidistant views, "
        "scores the unmeasured ones from posterior predictive samples and reveals the chosen "
        "views' measurements. We compare the adaptive acquisitions (`eig`, `var`) with the "
        "`equidistant` and `random` baselines: PSNR against the number of angles, the angles "
        "an adaptive strategy needs to match equidistant, and where the angles were put.\n\n"
        "Set `CTBAYES_QUICK=1` for a small run (GP prior, 32x32); otherwise the full setting "
        "(DIP + linearised Laplace, 64x64, 200 candidates) takes a long time on a CPU. "
        "`CTBAYES_DESIGN_LOG` analyses an existing log (e.g. from `ctbayes design`) instead."),
    new_code_cell(
        "import os\n"
        "QUICK = os.environ.get('CTBAYES_QUICK') == '1'\n"
        "LOG = os.environ.get('CTBAYES_DESIGN_LOG')  # analyse this log instead of running\n"
        "SIZE, CANDIDATES, INITIAL, ACQUIRE, PER_STEP = (32, 40, 4, 8, 2) if QUICK else (64, 200, 5, 35, 1)\n"
        "POSTERIOR = 'gp' if QUICK else 'laplace'\n"
        "STRATEGIES = ['eig', 'var', 'equidistant', 'random']"),
    new_code_cell(
        "import tempfile\n"
        "from pathlib import Path\n"
        "import numpy as np\n"
        "from IPython.display import Image, display\n"
        "from ctbayes.phantoms import make_phantom\n"
        "from ctbayes.simulate import default_geometry, simulate_scan\n"
        "from ctbayes.dip.fit import DIPConfig\n"
        "from ctbayes.design import DesignerConfig, LoopConfig, read_log, run_design\n"
        "from ctbayes.design.figures import polar_angles, psnr_curves\n"
        "work = Path(tempfile.mkdtemp())"),
    new_code_cell(
        "if LOG:\n"
        "    runs = read_log(LOG)\n"
        "else:\n"
        "    geometry = default_geometry(SIZE, views=CANDIDATES)\n"
        "    scan = simulate_scan(make_phantom('rectangles', SIZE, 1), geometry, noise_level=0.02, seed=0)\n"
        "    runs = {}\n"
        "    for strategy in STRATEGIES:\n"
        "        designer = DesignerConfig(acquisition=strategy, samples=64 if QUICK else 32,\n"
        "                                  reconstruction='mean' if QUICK else 'dip',\n"
        "                                  dip=DIPConfig(iterations=1000), refit_iterations=200,\n"
        "                                  posterior=POSTERIOR, noise_variance=scan.noise_std ** 2)\n"
        "        config = LoopConfig(INITIAL, ACQUIRE, PER_STEP, designer)\n"
        "        runs[strategy] = run_design(scan, config, work / 'design.h5')\n"
        "list(runs)"),
    new_markdown_cell("## PSNR per budget, and the angles needed to match equidistant"),
    new_code_cell(
        "budgets = runs[next(iter(runs))].num_angles\n"
        "print('angles  ' + '  '.join(f'{s:>11}' for s in runs))\n"
        "for b in budgets:\n"
        "    print(f'{b:6d}  ' + '  '.join(f'{r.psnr_at(b):8.2f} dB' for r in runs.values()))\n"
        "if 'equidistant' in runs:\n"
        "    ref = runs['equidistant']\n"
        "    target = float(ref.psnr[-1])\n"
        "    print(f'\\nequidistant final PSNR {target:.2f} dB with {ref.num_angles[-1]} angles')\n"
        "    for name, r in runs.items():\n"
        "        gap = min(r.psnr_at(b) - ref.psnr_at(b) for b in budgets)\n"
        "        print(f'{name:>11}: reaches it with {r.angles_to_reach(target):.0f} angles; '\n"
        "              f'worst PSNR gap to equidistant {gap:+.2f} dB')"),
    new_code_cell(
        "display(Image(str(psnr_curves(runs, work / 'psnr.png'))))\n"
        "for name in runs:\n"
        "    if name != 'equidistant':\n"
        "        display(Image(str(polar_angles(runs[name], work / f'angles_{name}.png'))))"),
    new_markdown_cell("## Reconstructions at the final budget"),
    new_code_cell(
        "import matplotlib.pyplot as plt\n"
        "fig, axes = plt.subplots(1, len(runs), figsize=(3.2 * len(runs), 3.2))\n"
        "for ax, (name, r) in zip(np.atleast_1d(axes), runs.items()):\n"
        "    ax.imshow(r.reconstructions[-1], cmap='gray')\n"
        "    ax.set_title(f'{name}: {r.psnr[-1]:.1f} dB PSNR')\n"
        "    ax.axis('off')\n"
        "plt.show()"),
]


def main():
    nb = new_notebook(cells=CELLS, metadata={"kernelspec": {"name": "python3",
                                                            "display_name": "Python 3",
                                                            "language": "python"}})
    path = Path(__file__).with_name("design_loop.ipynb")
    nbformat.write(nb, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
