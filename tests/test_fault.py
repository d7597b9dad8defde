"""Faults in real processes: kill -9 at a checkpoint boundary (chosen at random from a fixed
seed) and resume must give the bit-identical image and design log of an uninterrupted run;
SIGINT must say how to continue; and a killed run's lock file must not block the resume."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from ctbayes.io import write_scan
from ctbayes.operators import make_ray_transform
from ctbayes.scan import Scan
from tests.conftest import disk_phantom, small_geometry

ROOT = Path(__file__).resolve().parents[1]
DIP = ["--uncertainty", "none", "--no-progress", "--checkpoint-every", "10"]
DESIGN = ["--initial", "3", "--acquire", "8", "--posterior", "gp", "--reconstruction", "mean",
          "--samples", "8", "--no-progress"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The processes share one compilation cache, so that only the first compiles."""
    cache = tmp_path_factory.mktemp("xla")
    return dict(os.environ, PYTHONPATH=str(ROOT), CTBAYES_CACHE_DIR=str(cache))


def _scan(folder: Path) -> Path:
    g = small_geometry("parallel")
    x = disk_phantom()
    return write_scan(Scan(np.asarray(make_ray_transform(g)(x)), g, ground_truth=x),
                      folder / "scan.h5")


def _ctbayes(args, env):
    return subprocess.run([sys.executable, "-m", "ctbayes"] + [str(a) for a in args],
                          capture_output=True, text=True, env=env, timeout=600)


def _stop_when(args, env, ready, sig):
    """Start `ctbayes args`, send `sig` once ready() holds; the finished process."""
    proc = subprocess.Popen([sys.executable, "-m", "ctbayes"] + [str(a) for a in args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        if ready():
            proc.send_signal(sig)
            break
        time.sleep(0.005)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, f"the run ended before the fault was injected: {err}"
    return proc, out, err


def _checkpoint_at(path: Path, iteration: int):
    def ready():
        try:
            with np.load(path) as data:
                return int(data["iteration"]) >= iteration
        except (OSError, ValueError, KeyError, EOFError):
            return False
    return ready


def _mean(path):
    with h5py.File(path, "r") as f:
        return f["reconstruction/mean"][()], dict(f["reconstruction"].attrs)


def test_kill_9_during_a_dip_fit_then_resume_is_bit_identical(tmp_path, env):
    scan = _scan(tmp_path)
    iterations = 120
    reference = _ctbayes(["reconstruct", scan, "-o", tmp_path / "ref.h5", "--iterations",
                          iterations] + DIP, env)
    assert reference.returncode == 0, reference.stderr
    boundary = random.Random(35).randrange(10, iterations - 30, 10)
    out = tmp_path / "out.h5"
    checkpoint = tmp_path / "out.ckpt.npz"
    args = ["reconstruct", scan, "-o", out, "--iterations", iterations] + DIP
    proc, _, _ = _stop_when(args, env, _checkpoint_at(checkpoint, boundary), signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists() and checkpoint.exists()
    resumed = _ctbayes(args + ["--resume"], env)
    assert resumed.returncode == 0, resumed.stderr
    image, attrs = _mean(out)
    expected, _ = _mean(tmp_path / "ref.h5")
    assert np.array_equal(image, expected)
    assert attrs["seconds_dip_total"] >= attrs["seconds_dip_fit"]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == \
        ["out.h5", "ref.h5", "scan.h5"]  # the killed run's lock file is gone too


def test_sigint_says_resume_continues_and_the_resumed_timings_add_up(tmp_path, env):
    scan = _scan(tmp_path)
    out = tmp_path / "out.h5"
    checkpoint = tmp_path / "out.ckpt.npz"
    args = ["reconstruct", scan, "-o", out] + DIP
    proc, _, err = _stop_when(args + ["--iterations", 100000], env,
                              _checkpoint_at(checkpoint, 20), signal.SIGINT)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == (f"ctbayes: interrupted; run the same command with "
                                            f"--resume to continue from {checkpoint}.")
    with np.load(checkpoint) as data:
        done, fit_seconds = int(data["iteration"]), float(data["fit_seconds"])
    resumed = _ctbayes(args + ["--iterations", done + 20, "--resume"], env)
    assert resumed.returncode == 0, resumed.stderr
    _, attrs = _mean(out)
    assert attrs["seconds_dip_fit"] >= fit_seconds
    assert attrs["seconds_dip_total"] >= attrs["seconds_dip_fit"]
    assert not checkpoint.exists() and not (tmp_path / "out.h5.lock").exists()


def _log(path):
    with h5py.File(path, "r") as f:
        g = f["runs/eig"]
        return {key: g[key][()] for key in ("num_angles", "views", "new_views", "psnr", "ssim",
                                            "reconstructions", "scores")}


def _steps(path: Path, steps: int):
    def ready():
        try:
            with h5py.File(path, "r") as f:
                return len(f["runs/eig/num_angles"]) >= steps
        except (OSError, KeyError):
            return False
    return ready


def test_kill_9_during_a_design_loop_then_resume_is_bit_identical(tmp_path, env):
    scan = _scan(tmp_path)
    reference = _ctbayes(["design", scan, "-o", tmp_path / "ref.h5"] + DESIGN, env)
    assert reference.returncode == 0, reference.stderr
    boundary = random.Random(35).randrange(1, 7)
    log = tmp_path / "log.h5"
    args = ["design", scan, "-o", log] + DESIGN
    proc, _, _ = _stop_when(args, env, _steps(log, boundary), signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    partial = _log(log)
    assert boundary <= len(partial["num_angles"]) < 9
    resumed = _ctbayes(args + ["--resume"], env)
    assert resumed.returncode == 0, resumed.stderr
    got, expected = _log(log), _log(tmp_path / "ref.h5")
    assert got.keys() == expected.keys()
    for key in got:
        assert np.array_equal(got[key], expected[key], equal_nan=True), key
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == \
        ["log.h5", "ref.h5", "scan.h5"]
