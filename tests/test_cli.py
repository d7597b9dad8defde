"""The command line end to end: simulate, info, import, reconstruct, and the result contract."""

import json
from pathlib import Path

import h5py
import numpy as np

from ctbayes import __version__
from ctbayes.cli import main
from ctbayes.io import read_scan
from ctbayes.results import read_result


def test_simulate_info_reconstruct(tmp_path, capsys):
    scan_path = tmp_path / "sim.h5"
    assert main(["simulate", str(scan_path), "--phantom", "rectangles", "--size", "32",
                 "--views", "20", "--seed", "3"]) == 0
    scan = read_scan(scan_path)
    assert scan.sinogram.shape == (20, scan.geometry.det_count)
    assert scan.ground_truth.shape == (32, 32) and scan.noise_std > 0

    assert main(["info", str(scan_path)]) == 0
    out = capsys.readouterr().out
    assert "parallel beam, 20 views" in out and "ground truth (32, 32)" in out

    figures = tmp_path / "figs"
    assert main(["reconstruct", str(scan_path), "--method", "tv", "--figures", str(figures)]) == 0
    result_path = tmp_path / "sim.ctbayes.h5"
    result = read_result(result_path)
    assert result.mean.shape == (32, 32) and result.mean.dtype == np.float32
    assert result.method == "tv" and result.settings["tv_weight"] > 0
    assert result.metrics["psnr"] > 20
    assert (figures / "reconstruction.png").stat().st_size > 10_000
    with h5py.File(result_path) as f:
        attrs = f["reconstruction"].attrs
        assert attrs["version"] == __version__
        assert json.loads(attrs["settings"])["backend"] in ("sparse", "astra")
        assert attrs["seconds_reconstruction"] > 0


def test_simulate_renders_finer_without_the_inverse_crime(tmp_path, capsys):
    """--render 4: the phantom drawn at 128x128 and measured there (finite-width bins),
    the truth its 4x4 block means: the same scan as simulate_scan from Python."""
    from ctbayes.phantoms import make_phantom
    from ctbayes.simulate import default_geometry, simulate_scan

    path = tmp_path / "fine.h5"
    assert main(["simulate", str(path), "--phantom", "ellipses", "--size", "32", "--views", "12",
                 "--render", "4", "--seed", "2"]) == 0
    scan = read_scan(path)
    fine = make_phantom("ellipses", 128, 2)
    np.testing.assert_allclose(scan.ground_truth, fine.reshape(32, 4, 32, 4).mean((1, 3)),
                               rtol=1e-6, atol=1e-7)
    expected = simulate_scan(fine, default_geometry(32, views=12), seed=2)
    np.testing.assert_allclose(scan.sinogram, expected.sinogram, rtol=1e-5, atol=1e-5)
    assert main(["simulate", str(tmp_path / "bad.h5"), "--render", "0"]) != 0
    assert "render must be between 1 and 16" in capsys.readouterr().err
    assert not (tmp_path / "bad.h5").exists()


def test_import_reduces_an_nxtomo_file(tmp_path):
    source = tmp_path / "full.h5"
    assert main(["simulate", str(source), "--size", "32", "--views", "40", "--noise", "none"]) == 0
    out = tmp_path / "reduced.h5"
    assert main(["import", str(source), str(out), "--every", "2", "--angle-range", "0", "90"]) == 0
    reduced = read_scan(out)
    assert reduced.geometry.num_views == 10
    assert np.degrees(reduced.geometry.angles_array).max() < 90


def test_tv_beats_fbp_on_a_shipped_scan(tmp_path):
    scan = str(Path(__file__).resolve().parents[1] / "scans" / "shepp_logan_64_parallel.h5")
    psnr = {}
    for method in ("fbp", "tv"):
        out = tmp_path / f"{method}.h5"
        assert main(["reconstruct", scan, "--method", method, "-o", str(out)]) == 0
        psnr[method] = read_result(out).metrics["psnr"]
    assert psnr["tv"] > psnr["fbp"] + 3


def test_every_subcommand_help_shows_every_default():
    """Each optional flag with a default shows it in --help (the default comes from the
    config dataclass that owns it, e.g. --em-cycles from LaplaceConfig)."""
    import argparse

    from ctbayes.cli import build_parser
    from ctbayes.laplace import LaplaceConfig

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subparsers.choices) >= {"reconstruct", "design", "simulate", "import",
                                       "calibrate", "info"}
    for name, sub in subparsers.choices.items():
        text = " ".join(sub.format_help().split())  # argparse wraps lines
        for action in sub._actions:
            if not action.option_strings or action.default in (None, argparse.SUPPRESS) \
                    or isinstance(action, argparse._HelpAction):
                continue
            assert f"(default: {action.default})" in text, (name, action.option_strings)
    reconstruct = subparsers.choices["reconstruct"]
    em = next(a for a in reconstruct._actions if "--em-cycles" in a.option_strings)
    assert em.default == LaplaceConfig.em_cycles
