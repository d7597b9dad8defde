"""Score-based VI (proximal score matching) against ADVI, BaM and GSM on small BNNs.

Problems: two-moons classification, scikit-learn's breast_cancer classification and diabetes
regression (digits too without --quick), and the large ones, digits_wide (about 1.2e4 weights)
and digits_deep (about 1.1e5 weights). Every method runs side by side in this process on the
same minibatches; the table gives test NLL, ECE, accuracy or RMSE, training wall time, and the
fair speed comparison: the common level is the worse of the method's and ADVI's final test NLL,
and each method's OWN training time to first reach it is read off its own curve
(`speedup_vs_advi` = ADVI's time / the method's; target >= 2 with ECE no worse, `meets_target`).
Convergence curves (test NLL against wall time) are drawn only when --figure is given.

    python benchmarks/score_vi.py [--quick] [--json PATH] [--figure PATH] [--problems ...]
        [--families diagonal lowrank flow]
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from common import parse_args, report

from ctbayes.score_vi import problems
from ctbayes.score_vi.compare import CompareSettings, compare_methods, plot_curves


def main():
    def extra(p):
        p.add_argument("--figure", type=Path, default=None,
                       help="draw the convergence curves to this file (none by default)")
        p.add_argument("--problems", nargs="+", default=None, choices=sorted(problems.PROBLEMS),
                       help="which problems (default: all that the size setting includes)")
        p.add_argument("--families", nargs="+", default=["diagonal"],
                       choices=["diagonal", "lowrank", "flow"])

    args = parse_args(__doc__.splitlines()[0], extra)
    settings = CompareSettings.quick() if args.quick else CompareSettings()
    settings = dataclasses.replace(settings, families=tuple(args.families))
    names = args.problems or (["two_moons", "breast_cancer", "diabetes"]
                              + ([] if args.quick else ["digits"]) + ["digits_wide", "digits_deep"])
    rows, curves = [], {}
    for name in names:
        problem_rows, curves[name] = compare_methods(problems.PROBLEMS[name](), settings)
        rows.extend(problem_rows)
        for row in problem_rows:
            print(row, flush=True)
    if args.figure is not None:
        plot_curves(curves, args.figure)
        print(f"convergence curves: {args.figure}")
    report(rows, args.json, "Score-VI vs ADVI, BaM, GSM (test metrics; times in seconds, same run)")


if __name__ == "__main__":
    main()
