"""Side-by-side comparison of score-VI, ADVI, BaM and GSM on a BNN problem.

Every method runs on the same target (same minibatch size, same starting point) and is scored
on the test set after every chunk of steps (evaluation time not counted). The table row of a
method holds its final test NLL, ECE, accuracy or RMSE, training wall time, and the training
time at which its test NLL first reached ADVI's final test NLL; the target is reaching it in at
most half of ADVI's wall time with an ECE no worse than ADVI's (`meets_target`).
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
    reference = runs["advi"].curve[-1]
    advi_seconds = runs["advi"].train_seconds
    rows = []
    for name, run in runs.items():
        final = run.curve[-1]
        reached = next((c["seconds"] for c in run.curve if c["nll"] <= reference["nll"]), math.nan)
        quality = "accuracy" if problem.kind == "classification" else "rmse"
        row = dict(problem=problem.name, dim=target.dim, method=name, steps=final["step"],
                   test_nll=final["nll"], ece=final["ece"], **{quality: final[quality]},
                   train_s=run.train_seconds, compile_s=run.compile_seconds,
                   s_to_advi_nll=reached, frac_of_advi_time=reached / advi_seconds)
        if name != "advi":
            fast = reached <= 0.5 * advi_seconds
            calibrated = final["ece"] <= reference["ece"]
            row["meets_target"] = "yes" if fast and calibrated else "no: " + ", ".join(
                ([] if fast else ["slower than 50% of ADVI" if reached == reached
                                  else "never reached ADVI's NLL"])
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
