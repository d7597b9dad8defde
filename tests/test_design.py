"""Adaptive angle selection: acquisition scores and batch conditioning against the exact
Gaussian posterior of a Matern GP prior, the masked operator against the genuine subset,
the baselines, the designer's propose/observe protocol, resume, the CLI and the notebook.
"""

import argparse
import dataclasses
from pathlib import Path

import jax
import numpy as np
import pytest

from ctbayes.design import acquisition, batch, command, network
from ctbayes.design.designer import AngleDesigner, DesignerConfig
from ctbayes.posteriors.gp import GPConfig, MaternPrior, gp_posterior, measured_system
from ctbayes.design.loop import LoopConfig, read_log, run_design
from ctbayes.design.masked import masked
from ctbayes.dip.fit import DIPConfig
from ctbayes.errors import InputError
from ctbayes.io import write_scan
from ctbayes.metrics import psnr
from ctbayes.operators import make_ray_transform
from ctbayes.phantoms import make_phantom
from ctbayes.simulate import default_geometry, simulate_scan
from tests.conftest import run_quick_notebook

ROOT = Path(__file__).resolve().parents[1]
PRIOR = MaternPrior(lengthscale=4.0, variance=0.1, nu=1.5, mean=0.3)
MEASURED = [0, 7, 15, 22]  # equidistant_views(30, 4)


@pytest.fixture(scope="module")
def scan():
    geometry = default_geometry(32, views=30)
    return simulate_scan(make_phantom("rectangles", 32, 1), geometry, noise_level=0.02, seed=0)


@pytest.fixture(scope="module")
def gp_problem(scan):
    """(candidate operator, exact GP posterior after 4 equidistant views, noise variance)."""
    candidates = make_ray_transform(scan.geometry, "sparse")
    views = acquisition.equidistant_views(30, 4)
    assert list(views) == MEASURED
    s2 = float(scan.noise_std) ** 2
    post = gp_posterior(masked(candidates, views), scan.sinogram, PRIOR, s2)
    return candidates, post, s2


def exact_scores(cov, s2):
    """var, eig and diag-eig of exact per-view covariances (V, D, D)."""
    eye = np.eye(cov.shape[-1])
    eig = np.array([0.5 * np.linalg.slogdet(eye + c / s2)[1] for c in cov])
    diag = np.diagonal(cov, axis1=1, axis2=2)
    return {"var": np.trace(cov, axis1=1, axis2=2), "eig": eig,
            "diag-eig": 0.5 * np.log1p(diag / s2).sum(-1)}


# -- scores and conditioning against exact answers -------------------------------------------------
def test_gp_posterior_matches_precision_form(scan, gp_problem):
    candidates, post, s2 = gp_problem
    R, y = measured_system(masked(candidates, acquisition.equidistant_views(30, 4)), scan.sinogram)
    K = PRIOR.covariance((32, 32))
    precision = np.linalg.inv(K) + R.T @ R / s2
    cov = np.linalg.inv(precision)
    mean = cov @ (np.linalg.solve(K, np.full(1024, PRIOR.mean)) + R.T @ y / s2)
    np.testing.assert_allclose(post.cov, cov, atol=1e-6 * np.abs(cov).max())
    np.testing.assert_allclose(np.asarray(post.mean()).ravel(), mean, atol=1e-4)


def test_gp_with_data_updates_by_the_new_views_only(scan, gp_problem):
    """Growing the measured set updates the last posterior by the new rows: the same mean
    and covariance as conditioning on all rows afresh; other data start afresh."""
    candidates, post, s2 = gp_problem
    first = post.with_data(masked(candidates, MEASURED + [3]), scan.sinogram)
    grown = post.with_data(masked(candidates, MEASURED + [3, 11, 19]), scan.sinogram)
    assert post._latest is grown and grown.source is candidates and len(grown.rows) == 7 * 46
    fresh = gp_posterior(masked(candidates, MEASURED + [3, 11, 19]), scan.sinogram, PRIOR, s2)
    np.testing.assert_allclose(grown.cov, fresh.cov, atol=1e-9 * np.abs(fresh.cov).max())
    np.testing.assert_allclose(grown._mean, fresh._mean, atol=1e-8)
    assert not np.allclose(first.cov, fresh.cov)
    changed = np.array(scan.sinogram, copy=True)
    changed[3] += 1.0  # a view already conditioned on now says something else
    again = post.with_data(masked(candidates, MEASURED + [3, 11, 19]), changed)
    expected = gp_posterior(masked(candidates, MEASURED + [3, 11, 19]), changed, PRIOR, s2)
    np.testing.assert_allclose(again._mean, expected._mean, atol=1e-8)


def test_sample_scores_match_exact(gp_problem):
    candidates, post, s2 = gp_problem
    exact = exact_scores(post.predictive_covariance(candidates), s2)
    samples = post.predictive_samples(jax.random.key(0), 4000, candidates)
    z = acquisition.centred(samples)
    for kind in acquisition.ACQUISITIONS:
        estimate = acquisition.scores(kind, z, s2)
        np.testing.assert_allclose(estimate, exact[kind], rtol=0.08, atol=0.02 * exact[kind].max())
        assert np.argmax(estimate) == np.argmax(exact[kind]) or \
            exact[kind][np.argmax(estimate)] > 0.98 * exact[kind].max()
    # the measured views are the least informative
    assert set(np.argsort(exact["eig"])[:4]) == set(acquisition.equidistant_views(30, 4))


def test_batch_conditioning_is_the_exact_update(scan, gp_problem):
    """Conditioning the ensemble on a view equals the exact posterior with that view measured,
    and leaves the view's predictive variance below the noise level."""
    candidates, post, s2 = gp_problem
    samples = post.predictive_samples(jax.random.key(1), 4000, candidates)
    chosen, rounds = batch.greedy_batch(samples, 2, s2, "var",
                                        exclude=np.isin(np.arange(30), MEASURED))
    first = int(chosen[0])
    z = batch.condition(acquisition.centred(samples), first, s2)
    per_pixel = np.asarray(np.sum(z[:, first] ** 2, axis=0))
    assert per_pixel.max() < s2
    assert rounds[1][first] == -np.inf and chosen[1] != first
    after = gp_posterior(masked(candidates, MEASURED + [first]), scan.sinogram, PRIOR, s2)
    exact = np.trace(after.predictive_covariance(candidates), axis1=1, axis2=2)
    np.testing.assert_allclose(acquisition.scores("var", z, s2), exact, rtol=0.08,
                               atol=0.02 * exact.max())
    assert rounds[1].argmax() == chosen[1]


def test_masked_operator_equals_subset_for_laplace(scan):
    """The cheap update with the masked candidate operator gives the exact posterior of the
    genuine subset operator, for the linearised Laplace model with fixed hyperparameters."""
    from ctbayes.design.network import first_fit
    from ctbayes.laplace import LaplaceConfig, fit_laplace
    from ctbayes.posteriors.laplace import LaplacePosterior

    candidates = make_ray_transform(scan.geometry, "sparse")
    views = [0, 7, 15, 22, 3]
    sub = make_ray_transform(scan.geometry.with_angles(scan.geometry.angles_array[views]), "sparse")
    config = DIPConfig(iterations=0, scales=2, channels=4, skip_channels=2, in_channels=2,
                       warm_start=False)  # linearised at the initial network: no fit needed
    fit = first_fit(sub, scan.sinogram[views], config)
    lap = LaplaceConfig(prior="isotropic", em_cycles=1, solver="exact")
    base = fit_laplace(fit.render, fit.params, sub, scan.sinogram[views][:, :], lap)
    y = scan.sinogram * np.isin(np.arange(30), views)[:, None]
    updated = LaplacePosterior(base).with_data(masked(candidates, views), y, fit.params).engine
    np.testing.assert_allclose(np.asarray(updated.std()), np.asarray(base.std()), rtol=1e-3,
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(updated.linear_mean()), np.asarray(base.linear_mean()),
                               atol=1e-4)


# -- baselines ---------------------------------------------------------------------------------
def test_equidistant_spread():
    for n, b in [(200, 5), (200, 37), (720, 40), (30, 30)]:
        views = acquisition.equidistant_views(n, b)
        gaps = np.diff(np.append(views, views[0] + n))
        assert len(set(views)) == b and views[0] == 0 and gaps.max() - gaps.min() <= 1
    angles = np.linspace(0, np.pi, 60, endpoint=False)
    chosen = acquisition.spread_views(angles, [0], 3, np.pi)
    assert sorted(chosen.tolist()) == [15, 30, 45]
    with pytest.raises(InputError):
        acquisition.equidistant_views(10, 11)


# -- the designer ------------------------------------------------------------------------------
def test_propose_observe_protocol(scan, gp_problem):
    candidates, post, s2 = gp_problem
    config = DesignerConfig(acquisition="eig", samples=2000, reconstruction="mean",
                            backend="sparse", posterior="gp",
                            posterior_config=GPConfig(PRIOR, s2))
    designer = AngleDesigner(scan.geometry, config=config)
    with pytest.raises(InputError):
        designer.propose(1)
    start = scan.geometry.angles_array[MEASURED]
    designer.observe(start, scan.sinogram[MEASURED])
    np.testing.assert_allclose(np.asarray(designer.posterior.mean()), np.asarray(post.mean()),
                               atol=1e-5)
    proposal = designer.propose(2)
    assert len(set(proposal.tolist())) == 2 and not np.isin(proposal, start).any()
    exact = exact_scores(post.predictive_covariance(candidates), s2)["eig"]
    first = designer.views_of(proposal[:1])[0]
    assert exact[first] > 0.98 * exact.max()
    views = designer.views_of(proposal)
    designer.observe(proposal, scan.sinogram[views])
    np.testing.assert_allclose(designer.measured_angles, np.append(start, proposal))
    assert float(np.asarray(designer.posterior.std()).mean()) < float(np.asarray(post.std()).mean())
    with pytest.raises(InputError):
        designer.observe(proposal[:1], scan.sinogram[views[:1]])  # observed twice
    with pytest.raises(InputError):
        designer.observe([0.123456], scan.sinogram[:1])  # not a candidate angle


TINY_DIP = DIPConfig(iterations=0, scales=2, channels=4, skip_channels=2, in_channels=2,
                     chunk=20, warm_start_iterations=20)


def test_resume_reproduces_uninterrupted(scan, tmp_path):
    """DIP + linearised Laplace (exact solver): a cheap update, a relinearisation; a run stopped
    after its first acquisition and resumed equals the uninterrupted run exactly."""
    from ctbayes.laplace import LaplaceConfig

    laplace = LaplaceConfig(prior="isotropic", em_cycles=1, solver="exact")
    config = LoopConfig(initial=3, acquire=2, per_step=1, designer=DesignerConfig(
        acquisition="eig", samples=8, dip=TINY_DIP, refit_iterations=20, refit_every=2,
        backend="sparse", posterior_config=laplace))
    full = run_design(scan, config, tmp_path / "full.h5")

    class Stop(Exception):
        pass

    def stop_after_first(run):
        if len(run.num_angles) == 2:
            raise Stop

    with pytest.raises(Stop):
        run_design(scan, config, tmp_path / "part.h5", callback=stop_after_first)
    assert not read_log(tmp_path / "part.h5", "eig").complete
    resumed = run_design(scan, config, tmp_path / "part.h5", resume=True)
    assert resumed.complete and list(resumed.num_angles) == [3, 4, 5]
    for a, b in zip(full.views, resumed.views):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(full.reconstructions, resumed.reconstructions)
    np.testing.assert_array_equal(full.psnr, resumed.psnr)
    assert full.psnr[-1] > full.psnr[0]
    other = LoopConfig(initial=4, acquire=1, designer=config.designer)
    with pytest.raises(InputError):
        run_design(scan, other, tmp_path / "part.h5", resume=True)


@pytest.mark.parametrize("method", ["mfvi", "score-vi"])
def test_variational_posteriors_drive_the_designer(scan, method):
    """The VI posteriors over the DIP weights serve as design backends: the scores are the
    acquisition of that posterior's own predictive samples, and each observation refits it
    on all measured views."""
    from ctbayes.posteriors.mfvi import MFVIConfig
    from ctbayes.posteriors.score_vi import ScoreVIConfig

    vi = MFVIConfig(iterations=20, std_samples=8) if method == "mfvi" else \
        ScoreVIConfig(steps=10, view_groups=1, moment_samples=8)
    config = DesignerConfig(acquisition="var", samples=16, dip=TINY_DIP, refit_iterations=10,
                            backend="sparse", posterior=method, posterior_config=vi)
    designer = AngleDesigner(scan.geometry, config=config)
    designer.observe_views(MEASURED, scan.sinogram[MEASURED])
    first = designer.posterior
    views = designer.propose_views(2)
    assert len(set(views.tolist())) == 2 and not np.isin(views, MEASURED).any()
    key = jax.random.fold_in(jax.random.key(config.seed), len(MEASURED))
    own = first.predictive_samples(key, config.samples, designer.candidates)
    expected = acquisition.scores("var", acquisition.centred(own), designer.noise_variance())
    np.testing.assert_allclose(designer.last_scores[~designer.measured],
                               expected[~designer.measured], rtol=1e-4)
    assert int(views[0]) == int(np.argmax(np.where(designer.measured, -np.inf, expected)))
    designer.observe_views(views, scan.sinogram[views])
    assert designer.posterior is not first  # refitted on the six views
    assert np.all(np.isfinite(np.asarray(designer.posterior.std())))
    with pytest.raises(InputError):  # a config of another method
        DesignerConfig(posterior="laplace", posterior_config=vi)


# -- the CLI -----------------------------------------------------------------------------------
def parse(argv):
    parser = argparse.ArgumentParser()
    command.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["design"] + argv)


def test_cli_runs_and_rejects_bad_input(scan, tmp_path):
    path = write_scan(scan, tmp_path / "scan.h5")
    log = tmp_path / "log.h5"
    common = ["-o", str(log), "--posterior", "gp", "--reconstruction", "mean", "--backend",
              "sparse", "--initial", "3", "--acquire", "4", "--per-step", "2", "--samples", "64",
              "--no-progress"]
    assert command.run(parse([str(path), *common, "--strategies", "eig,equidistant",
                              "--figures", str(tmp_path / "fig")])) == 0
    runs = read_log(log)
    assert set(runs) == {"eig", "equidistant"}
    assert list(runs["equidistant"].views[-1]) == list(acquisition.equidistant_views(30, 7))
    assert (tmp_path / "fig" / "psnr.png").exists() and (tmp_path / "fig" / "angles_eig.png").exists()
    bad = [["--strategies", "eig,best"], ["--acquire", "40"], ["--initial", "0"],
           ["--samples", "-1"]]
    for extra in bad:
        with pytest.raises(InputError):
            command.run(parse([str(path), *common, *extra]))
    with pytest.raises(InputError):
        command.run(parse([str(tmp_path / "missing.h5"), *common]))


# -- the notebook ------------------------------------------------------------------------------
def test_notebook_runs_in_quick_mode():
    _, text = run_quick_notebook("design_loop.ipynb", timeout=120)
    assert "PSNR" in text


def test_dip_refit_fits_the_new_views():
    """A warm-started refit with the designer's defaults must fit the views that arrived:
    on a converged 64x64 U-Net, the misfit on all views at least halves and the image gets
    closer to the truth (with the first fit's learning rate 1e-2, Adam's fresh first steps
    wrecked the fit, `keep="best"` returned the old image: misfit -22%, +0.1 dB)."""
    scan64 = simulate_scan(make_phantom("rectangles", 64, 1), default_geometry(64, views=60),
                           noise_level=0.02, seed=0)
    config = DesignerConfig(acquisition="random", refit_every=0)
    designer = AngleDesigner(scan64.geometry, config=dataclasses.replace(config, refit_iterations=0))
    first = [0, 12, 24, 36, 48]
    designer.observe_views(first, scan64.sinogram[first])
    before = designer.fit
    new = [3, 9, 17, 21, 29, 33, 41, 45, 53, 57]
    designer.observe_views(new, scan64.sinogram[new])
    A, y = designer.operator()
    after = network.refit(before, A, y, config.refit_iterations, config.refit_lr, config.dip)

    def misfit(image):
        return float(np.sum((np.asarray(A(image)) - y) ** 2) / np.sum(y ** 2))

    assert misfit(after.image) < 0.5 * misfit(before.image)
    truth = scan64.ground_truth
    assert psnr(after.image, truth) > psnr(before.image, truth) + 2.0
