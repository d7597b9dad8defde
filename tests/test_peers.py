"""benchmarks/peers.py and the fair time-to-level metric: the pieces that need no torch, and
(skipped without the `peers` extra) the torch copy of the ray transform."""

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ctbayes.score_vi import problems
from ctbayes.score_vi.compare import common_level, time_to_level
from tests.conftest import small_geometry

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import peers  # noqa: E402


def _curve(times, values, key="nll"):
    return [{"seconds": t, key: v} for t, v in zip(times, values)]


def test_time_to_level_interpolates_the_first_crossing():
    # NLL 2 -> 1 linearly over 0..10 s crosses 1.5 at exactly 5 s
    assert time_to_level(_curve([0, 10], [2.0, 1.0]), 1.5) == pytest.approx(5.0)
    # the first crossing counts, even when the curve later rises back above the level
    curve = _curve([0, 1, 2, 3], [3.0, 1.0, 2.5, 0.5])
    assert time_to_level(curve, 2.0) == pytest.approx(0.5)
    # a curve that starts at the level takes no time; one that never reaches it: NaN
    assert time_to_level(curve, 3.0) == 0.0
    assert math.isnan(time_to_level(curve, 0.1))


def test_own_time_to_a_common_level_is_not_a_fraction_of_the_baseline_budget():
    """The flattering metric this replaces: a baseline that reaches its final level at 12%
    of its budget and then plateaus. A method reaching the same level at 3 s of its own
    10 s budget is 1/0.3 = 3.3x faster by a fraction-of-budget reading, but the baseline
    got there itself at 1.2 s: the fair speed-up is 1.2 / 3 = 0.4."""
    baseline = _curve([0, 1.2, 10], [2.0, 1.0, 1.0])
    method = _curve([0, 3, 10], [2.0, 1.0, 0.9])
    level = common_level(baseline[-1]["nll"], method[-1]["nll"])
    assert level == 1.0  # the worse of the two finals: both curves reach it
    own, theirs = time_to_level(method, level), time_to_level(baseline, level)
    assert (own, theirs) == (pytest.approx(3.0), pytest.approx(1.2))
    assert theirs / own == pytest.approx(0.4)


def test_time_to_psnr_reads_higher_as_better():
    curve = _curve([0, 4, 8], [10.0, 20.0, 30.0], key="psnr")
    assert peers.time_to_psnr(curve, 25.0) == pytest.approx(6.0)
    assert math.isnan(peers.time_to_psnr(curve, 31.0))
    assert peers.speed_verdict(3.0, 6.0, 2.0) == "met"
    assert peers.speed_verdict(3.1, 6.0, 2.0) == "missed"
    assert peers.speed_verdict(math.nan, 6.0, 2.0).startswith("missed")


def test_large_bnn_problems_have_the_advertised_sizes():
    pytest.importorskip("sklearn")
    from numpyro import handlers

    for name, dim in (("digits_wide", 12_010), ("digits_deep", 112_810)):
        problem = problems.PROBLEMS[name]()
        trace = handlers.trace(handlers.seed(problem.model, 0)).get_trace(
            problem.x_train, problem.y_train)  # one eager pass: no compilation
        latent = sum(int(np.size(site["value"])) for site in trace.values()
                     if site["type"] == "sample" and not site["is_observed"])
        assert latent == dim, (name, latent)


def test_peers_benchmark_skips_in_one_sentence_without_the_extra(tmp_path):
    """With the peer packages hidden (a `sitecustomize` that makes their import fail), the
    script prints one sentence naming the extra and exits 0, writing nothing."""
    hide = tmp_path / "sitecustomize.py"
    hide.write_text(
        "import importlib.abc, sys\n"
        "class Hide(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'deepinv', 'cuqi'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Hide())\n")
    import os

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    out = tmp_path / "out.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peers.py"), "--quick",
                           "--json", str(out)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == 1 and "extra `peers`" in lines[0] and lines[0].endswith(".")
    assert not out.exists()


needs_torch = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("torch", "deepinv")),
    reason="the optional extra `peers` (torch, deepinv) is not installed")


@needs_torch
def test_torch_operator_matches_ctbayes_and_is_its_adjoint():
    import torch

    from ctbayes.operators import make_ray_transform

    A = make_ray_transform(small_geometry("parallel", size=16, views=12), "sparse")
    physics = peers.torch_physics(A, dtype=torch.float64)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, *A.domain_shape))
    y = rng.standard_normal((2, *A.range_shape))
    Ax = physics.A(torch.as_tensor(x)[:, None])[:, 0].numpy()
    np.testing.assert_allclose(Ax, np.asarray(A(x.astype(np.float32))), rtol=1e-4, atol=1e-4)
    ATy = physics.A_adjoint(torch.as_tensor(y)[:, None])[:, 0].numpy()
    assert np.sum(Ax * y) == pytest.approx(np.sum(x * ATy), rel=1e-10)
    # autograd through A is A^T: d/dx <A x, y> = A^T y
    xt = torch.as_tensor(x)[:, None].requires_grad_(True)
    (physics.A(xt) * torch.as_tensor(y)[:, None]).sum().backward()
    np.testing.assert_allclose(xt.grad[:, 0].numpy(), ATy, rtol=1e-10)
