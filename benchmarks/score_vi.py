"""Score-based VI (proximal score matching) against ADVI, BaM and GSM on small BNNs.

Problems: two-moons classification, scikit-learn's breast_cancer classification and diabetes
regression (digits too without --quick). Every method runs side by side in this process on the
same minibatches; the table gives test NLL, ECE, accuracy or RMSE, training wall time, and the
time to reach ADVI's final test NLL (target: <= 50% of ADVI's time, ECE no worse; the
`meets_target` column says where it falls short). Convergence curves (test NLL against wall
time) are saved to --figure.

    python benchmarks/score_vi.py [--quick] [--json PATH] [--figure PATH] [--families diagonal lowrank flow]
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from common import parse_args, report

from ctbayes.score_vi import problems
from ctbayes.score_vi.compare import CompareSettings, compare_methods, plot_curves


def main():
    def extra(p):
        p.add_argument("--figure", type=Path, default=Path("score_vi_curves.png"))
        p.add_argument("--families", nargs="+", default=["diagonal"],
                       choices=["diagonal", "lowrank", "flow"])

    args = parse_args(__doc__.splitlines()[0], extra)
    settings = CompareSettings.quick() if args.quick else CompareSettings()
    settings = dataclasses.replace(settings, families=tuple(args.families))
    names = ["two_moons", "breast_cancer", "diabetes"] + ([] if args.quick else ["digits"])
    rows, curves = [], {}
    for name in names:
        problem_rows, curves[name] = compare_methods(problems.PROBLEMS[name](), settings)
        rows.extend(problem_rows)
        for row in problem_rows:
            print(row, flush=True)
    plot_curves(curves, args.figure)
    print(f"convergence curves: {args.figure}")
    report(rows, args.json, "Score-VI vs ADVI, BaM, GSM (test metrics; times in seconds, same run)")


if __name__ == "__main__":
    main()
