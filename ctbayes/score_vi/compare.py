"""Side-by-side comparison of score-VI, ADVI, BaM and GSM on a BNN problem.

Every method runs on the same target (same minibatch size, same starting point) and is scored
on the test set after every chunk of steps (evaluation time not counted). The table row of a
method holds its final test NLL, ECE, accuracy or RMSE and training wall time, and the fair
speed comparison with ADVI: the common level is the worse (higher) of the two final test NLLs,
a level both curves reach; each method's own training time to first reach it is read off its
own curve (`time_to_level`), and `speedup_vs_advi` is ADVI's time over the method's. The
target is a speed-up of at least 2 with an ECE no worse than ADVI's (`meets_target`).

Measuring against a fraction of ADVI's whole budget instead would flatter any method: ADVI
often reaches its own final NLL early and then spends the rest of its budget on a plateau.
"""

from __future__ import annotations

import dataclasses
import math

import jax

from ctbayes.score_vi import baselines, evaluation
from ctbayes.score_vi.families import make_family
from ctbayes.score_vi.proximal import ProximalConfig, proximal_score_matching
from ctbayes.score_vi.runner import run_method

FULL_COVARIANCE_MAX_DIM = 400  # BaM and GSM (O(D^3) per step) run up to this dimension


@dataclasses.dataclass(frozen=True)
class CompareSettings:
    advi_steps: int = 4000
    score_vi_steps: int = 1000
    gaussian_steps: int = 300
    evaluations: int = 15
    draws: int = 64
    families: tuple[str, ...] = ("diagonal",)
    seed: int = 0

    @classmethod
    def quick(cls):
        return cls(advi_steps=1500, score_vi_steps=500, gaussian_steps=100, evaluations=10)


def _methods(problem, target, s: CompareSettings):
    yield baselines.advi(problem.model, target, lr=1e-2, steps=s.advi_steps, final_lr=0.1), s.advi_steps
    for name in s.families:
        family = make_family(name, target.dim) if name != "lowrank" else make_family(name, target.dim, rank=4)
        config = ProximalConfig(steps=s.score_vi_steps, samples=4, inner_steps=4, lr=1e-2)
        method = proximal_score_matching(target, family, config, key=jax.random.key(s.seed))
        label = "score-vi" if name == "diagonal" else f"score-vi-{name}"
        yield dataclasses.replace(method, name=label), s.score_vi_steps
    if target.dim <= FULL_COVARIANCE_MAX_DIM:
        config = baselines.GaussianBaselineConfig(samples=16, prox=1.0)
        yield baselines.bam(target, config), s.gaussian_steps
        yield baselines.gsm(target, config), s.gaussian_steps


def time_to_level(curve, level: float, key: str = "nll") -> float:
    """The training time at which `curve` (dicts with "seconds" and `key`, in time order) first
    has `key` <= `level`, interpolated linearly between the evaluation before and the one that
    crossed; NaN if it never does. Interpolation keeps the answer from snapping to the coarse
    evaluation grid; a curve that starts at or below the level gives its first time."""
    previous = None
    for point in curve:
        value, seconds = float(point[key]), float(point["seconds"])
        if value <= level:
            if previous is None or previous[1] <= level:
                return seconds
            (t0, v0) = previous
            return t0 + (seconds - t0) * (v0 - level) / (v0 - value)
        previous = (seconds, value)
    return math.nan


def common_level(final_a: float, final_b: float) -> float:
    """The level both of two curves reach: the worse (higher) of their final values."""
    return max(float(final_a), float(final_b))


def compare_methods(problem, settings: CompareSettings = CompareSettings()):
    """Run every method that fits on `problem`; returns (rows, curves by method name)."""
    target = problem.target(settings.seed)
    key = jax.random.key(settings.seed)

    def evaluate(sample):
        return evaluation.predictive_metrics(problem, target, sample(jax.random.key(99), settings.draws))

    runs = {}
    for method, steps in _methods(problem, target, settings):
        runs[method.name] = run_method(method, key, steps, chunk=max(1, steps // settings.evaluations),
                                       evaluate=evaluate)
    advi = runs["advi"].curve
    rows = []
    for name, run in runs.items():
        final = run.curve[-1]
        level = common_level(advi[-1]["nll"], final["nll"])
        own, advi_own = time_to_level(run.curve, level), time_to_level(advi, level)
        quality = "accuracy" if problem.kind == "classification" else "rmse"
        row = dict(problem=problem.name, dim=target.dim, method=name, steps=final["step"],
                   test_nll=final["nll"], ece=final["ece"], **{quality: final[quality]},
                   train_s=run.train_seconds, compile_s=run.compile_seconds,
                   level_nll=level, s_to_level=own, advi_s_to_level=advi_own,
                   speedup_vs_advi=advi_own / own if own > 0 else (math.inf if advi_own > 0 else math.nan))
        if name != "advi":
            fast = own <= 0.5 * advi_own
            calibrated = final["ece"] <= advi[-1]["ece"]
            row["meets_target"] = "yes" if fast and calibrated else "no: " + ", ".join(
                ([] if fast else ["less than 2x faster than ADVI to the common NLL"])
                + ([] if calibrated else ["ECE worse than ADVI"]))
        rows.append(row)
    curves = {name: [(c["seconds"], c["nll"]) for c in run.curve] for name, run in runs.items()}
    return rows, curves


def plot_curves(curves_by_problem: dict, path) -> None:
    """Test NLL against training wall time, one panel per problem; saved to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves_by_problem), figsize=(4.5 * len(curves_by_problem), 3.5),
                             squeeze=False)
    for ax, (problem, curves) in zip(axes[0], curves_by_problem.items()):
        for name, points in curves.items():
            t, nll = zip(*points)
            ax.plot([max(v, 1e-3) for v in t], nll, marker=".", label=name)
        ax.set_xscale("log")
        ax.set_title(problem)
        ax.set_xlabel("training wall time (s)")
        ax.set_ylabel("test NLL")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
