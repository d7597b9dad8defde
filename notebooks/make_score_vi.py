"""Write notebooks/score_vi.ipynb (outputs stripped): python notebooks/make_score_vi.py"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

cells = [
    new_markdown_cell(
        "# Score-based VI: proximal score matching vs ADVI, BaM and GSM\n\n"
        "Proximal score matching (`ctbayes.score_vi`) fits q by matching the minibatch score of "
        "the posterior at draws from the current q, with a KL(q_t || q) proximal term. Here it "
        "runs side by side with ADVI (NumPyro AutoNormal), BaM and GSM on small BNNs; "
        "`CTBAYES_QUICK=1` (the test) uses tiny settings."),
    new_code_cell(
        "import os\n"
        "QUICK = os.environ.get('CTBAYES_QUICK', '0') == '1'\n"
        "PROBLEMS = ['two_moons'] if QUICK else ['two_moons', 'breast_cancer', 'diabetes']"),
    new_code_cell(
        "import dataclasses\n"
        "from ctbayes.score_vi import problems\n"
        "from ctbayes.score_vi.compare import CompareSettings, compare_methods, plot_curves\n"
        "settings = CompareSettings.quick() if QUICK else CompareSettings()\n"
        "if QUICK:\n"
        "    settings = dataclasses.replace(settings, advi_steps=600, score_vi_steps=200,\n"
        "                                   gaussian_steps=40, evaluations=5)\n"
        "rows, curves = [], {}\n"
        "for name in PROBLEMS:\n"
        "    r, curves[name] = compare_methods(problems.PROBLEMS[name](), settings)\n"
        "    rows += r"),
    new_code_cell(
        "cols = ['problem', 'method', 'test_nll', 'ece', 'train_s', 's_to_level', 'speedup_vs_advi', 'meets_target']\n"
        "for row in rows:\n"
        "    print('  '.join(f'{c}={row[c]:.4g}' if isinstance(row.get(c), float) else f'{c}={row.get(c, \"\")}' for c in cols))"),
    new_markdown_cell("Test NLL against training wall time (compilation excluded):"),
    new_code_cell(
        "import tempfile\n"
        "figure = os.path.join(tempfile.gettempdir(), 'score_vi_curves.png')\n"
        "plot_curves(curves, figure)\n"
        "from IPython.display import Image\n"
        "Image(figure)"),
]


def main() -> None:
    notebook = new_notebook(cells=cells, metadata={"kernelspec": {
        "name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(notebook, Path(__file__).with_name("score_vi.ipynb"))


if __name__ == "__main__":
    main()
