"""Generate uncertainty_maps.ipynb (outputs stripped): `python notebooks/make_uncertainty_maps.py`."""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    new_markdown_cell(
        "# Per-pixel uncertainty maps: linearised Laplace against MC dropout\n\n"
        "A DIP reconstruction of the shipped simulated Shepp-Logan scan and of HTC2022 `ta` "
        "reduced to 60 views over 360 degrees, each with the linearised-Laplace std (Matern-1/2 filter "
        "prior, the CLI's default; hyperparameters by sample-based EM) and, on the simulated scan, the DIP-MCDO baseline. "
        "Where is the std large, does it follow the error, and are its intervals calibrated? "
        "HTC2022 has no ground truth: its error is taken against the publisher's full-data FBP "
        "after a least-squares scale, inside the object (its filled segmentation, within the "
        "scanner's field of view: in the air the reference holds only its own artefacts, and "
        "outside the field of view nothing was measured); that reference is itself "
        "noisy and blurred, so read it as a sanity check. A check against a real measurement "
        "instead: the posterior predicts the 60 views halfway between the measured ones.\n\n"
        "`CTBAYES_QUICK=1` (what the tests run) uses a small network, few iterations and "
        "samples, and HTC2022 at 64x64; the full setting takes several minutes per scan on a CPU."),
    new_code_cell(
        "import dataclasses\nimport os\n"
        "from pathlib import Path\n"
        "import numpy as np\n"
        "import matplotlib.pyplot as plt\n"
        "from ctbayes import metrics\n"
        "from ctbayes.dip.fit import DIPConfig\n"
        "from ctbayes.io import read_scan\n"
        "from ctbayes.reconstruct import config_from_options, reconstruct\n"
        "from ctbayes.operators import make_ray_transform\n"
        "from ctbayes.scoring import (heldout_view_metrics, reference_variance, scoring_target,\n"
        "                             uncertainty_metrics)\n"
        "QUICK = os.environ.get('CTBAYES_QUICK') == '1'\n"
        "ROOT = Path.cwd().parent\n"
        "DIP = DIPConfig(iterations=300, channels=(8, 16, 32), warm_start_iterations=100) if QUICK else DIPConfig()\n"
        "UNC = dict(samples=16, em_cycles=2) if QUICK else dict(samples=128, em_cycles=4)\n"
        "HTC = ROOT.parent / 'shared' / 'data' / 'htc2022' / 'htc2022_ta_full.mat'"),
    new_markdown_cell("## The shipped simulated scan: Laplace and MC dropout"),
    new_code_cell(
        "scan = read_scan(ROOT / 'scans' / 'shepp_logan_64_parallel.h5')\n"
        "results = {}\n"
        "for method in ('laplace', 'mcdo'):\n"
        "    config = config_from_options(dict(uncertainty=method, save_samples=UNC['samples'], **UNC))\n"
        "    config = dataclasses.replace(config, dip=DIP)\n"
        "    results[method] = reconstruct(scan, config, progress=False)\n"
        "for method, r in results.items():\n"
        "    m = r.metrics\n"
        "    print(f\"{method:8s} PSNR {m['psnr']:.2f} dB  LL {m['log_likelihood']:.3f}  \"\n"
        "          f\"constant-std LL {m['log_likelihood_constant_std']:.3f}  \"\n"
        "          f\"coverage 50/90/95 {m['coverage_50']:.2f}/{m['coverage_90']:.2f}/{m['coverage_95']:.2f}  \"\n"
        "          f\"uncertainty {r.timings['uncertainty']:.0f} s (DIP {r.timings['dip_total']:.0f} s)\")"),
    new_code_cell(
        "def show(truth, results, title):\n"
        "    fig, axes = plt.subplots(len(results), 3, figsize=(11, 3.4 * len(results)), squeeze=False)\n"
        "    for row, (method, r) in zip(axes, results.items()):\n"
        "        for ax, (name, image, cmap) in zip(row, [('image', r.mean, 'gray'),\n"
        "                                                ('|error|', np.abs(r.mean - truth), 'magma'),\n"
        "                                                ('std', r.std, 'magma')]):\n"
        "            im = ax.imshow(image, cmap=cmap)\n"
        "            ax.set_title(f'{method}: {name}')\n"
        "            ax.axis('off')\n"
        "            fig.colorbar(im, ax=ax, fraction=0.046)\n"
        "    fig.suptitle(title)\n"
        "    fig.tight_layout()\n"
        "show(scan.ground_truth, results, 'Shepp-Logan 64x64, 30 views')"),
    new_markdown_cell(
        "Does the std follow the error? Per std decile, the RMSE of the pixels in it (a "
        "calibrated std lies on the diagonal), and the calibration curve of the Gaussian "
        "intervals:"),
    new_code_cell(
        "def calibration_plots(truth, results, mask=None):\n"
        "    keep = np.ones(np.shape(truth), bool) if mask is None else mask  # pixels to score\n"
        "    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.8))\n"
        "    for method, r in results.items():\n"
        "        std, err = r.std[keep], np.abs(r.mean - truth)[keep]\n"
        "        edges = np.quantile(std, np.linspace(0, 1, 11))\n"
        "        which = np.clip(np.searchsorted(edges, std, side='right') - 1, 0, 9)\n"
        "        a.plot([std[which == k].mean() for k in range(10)],\n"
        "               [np.sqrt(np.mean(err[which == k] ** 2)) for k in range(10)], 'o-', label=method)\n"
        "        b.plot(*metrics.calibration_curve(truth[keep], r.mean[keep], r.std[keep]), 'o-', label=method)\n"
        "    top = a.get_xlim()[1]\n"
        "    a.plot([0, top], [0, top], 'k--', lw=1); a.set_xlabel('std'); a.set_ylabel('RMSE'); a.legend()\n"
        "    b.plot([0, 1], [0, 1], 'k--', lw=1); b.set_xlabel('nominal'); b.set_ylabel('observed coverage'); b.legend()\n"
        "    fig.tight_layout()\n"
        "calibration_plots(scan.ground_truth, results)"),
    new_markdown_cell("## HTC2022 `ta`, 60 views over 360 degrees"),
    new_code_cell(
        "htc = {}\n"
        "if HTC.exists():\n"
        "    from ctbayes.io.importers import import_scan\n"
        "    full = import_scan(HTC, image_size=64 if QUICK else 128)  # 720 views\n"
        "    views = np.arange(0, 720, 12)\n"
        "    real, held = full.subset(views), full.subset(views + 6)  # measured, held out\n"
        "    config = config_from_options(dict(save_samples=UNC['samples'], **UNC))\n"
        "    config = dataclasses.replace(config, dip=DIP)\n"
        "    htc['laplace'] = r = reconstruct(real, config, progress=False)\n"
        "    reference, seen = scoring_target(real, r.mean)  # scaled FBP; the object, in the field of view\n"
        "    scores = uncertainty_metrics(reference, r.mean, r.std, r.samples, mask=seen)\n"
        "    print('HTC2022 ta vs scaled full-data FBP, inside the object:',\n"
        "          {k: round(v, 3) for k, v in scores.items()})\n"
        "    noise = reference_variance(real, r.mean)  # that FBP's own noise, drawn at import\n"
        "    allowing = uncertainty_metrics(reference, r.mean, r.std, r.samples, mask=seen, truth_variance=noise)\n"
        "    print('the same, allowing for the reference FBP\\'s own noise:',\n"
        "          {k: round(v, 3) for k, v in allowing.items()})\n"
        "    predicted = heldout_view_metrics(make_ray_transform(held.geometry), held.sinogram,\n"
        "                                     r.samples, r.hyperparameters['noise_variance'])\n"
        "    print('the 60 held-out views, per ray:', {k: round(v, 3) for k, v in predicted.items()})\n"
        "    show(reference, htc, 'HTC2022 ta, 60 views (error against the full-data FBP)')\n"
        "    calibration_plots(reference, htc, seen)\n"
        "else:\n"
        "    print(f'HTC2022 data not found at {HTC}: skipped')"),
    new_markdown_cell(
        "What to look for: a useful std map is large where the error is large (edges, and "
        "regions the views constrain least), its RMSE-per-decile curve follows the diagonal, "
        "and its log-likelihood beats the best constant std. `benchmarks/uncertainty.py` "
        "prints these numbers for every shipped scan, with the time of each step."),
]


def main() -> None:
    nb = new_notebook(cells=CELLS, metadata={"kernelspec": {
        "name": "python3", "display_name": "Python 3", "language": "python"}})
    path = Path(__file__).with_name("uncertainty_maps.ipynb")
    nbformat.write(nb, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
