"""A corpus of malformed scan files: each gets one clear sentence, exit status 2, no traceback
and no output file."""

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from ctbayes.cli import main
from ctbayes.io import write_scan
from ctbayes.operators import make_ray_transform
from ctbayes.scan import Scan
from tests.conftest import disk_phantom, small_geometry


def _valid(path):
    g = small_geometry("parallel")
    x = disk_phantom()
    return write_scan(Scan(np.asarray(make_ray_transform(g)(x)), g, ground_truth=x), path)


def _edit(path, fn):
    _valid(path)
    with h5py.File(path, "r+") as f:
        fn(f)
    return path


def _replace(name, value):
    def fn(f):
        del f[name]
        f[name] = value
    return fn


def _set_attr(name, value):
    def fn(f):
        f["entry/ctbayes"].attrs[name] = value
    return fn


DATA = "entry/instrument/detector/data"
ANGLES = "entry/sample/rotation_angle"

CORPUS = {
    "text file": (lambda p: p.write_text("not a scan\n") and p, "not an HDF5 file"),
    "empty file": (lambda p: (p.write_bytes(b""), p)[1], "the file is empty"),
    "truncated": (lambda p: p.write_bytes(_valid(p).read_bytes()[:3000]) and p, "truncated or corrupt"),
    "no sinogram": (lambda p: _edit(p, lambda f: f.__delitem__(DATA)), "missing dataset /entry/instrument/detector/data"),
    "no angles": (lambda p: _edit(p, lambda f: f.__delitem__(ANGLES)), "missing dataset /entry/sample/rotation_angle"),
    "1D sinogram": (lambda p: _edit(p, _replace(DATA, np.ones(48, np.float32))), "expected (views, detector)"),
    "angle count": (lambda p: _edit(p, _replace(ANGLES, np.arange(7.0))), "has 7 angles but"),
    "NaN": (lambda p: _edit(p, lambda f: f[DATA].__setitem__((0, 0), np.nan)), "NaN or infinite"),
    "inf angle": (lambda p: _edit(p, lambda f: f[ANGLES].__setitem__(3, np.inf)), "NaN or infinite"),
    "empty arrays": (lambda p: _edit(p, lambda f: (_replace(DATA, np.zeros((0, 48), np.float32))(f),
                                                   _replace(ANGLES, np.zeros(0))(f))), "is empty"),
    "unknown beam": (lambda p: _edit(p, _set_attr("beam", "helical")), "unknown beam type 'helical'"),
    "text data": (lambda p: _edit(p, _replace(DATA, "abc")), "expected numbers"),
    "fan without distances": (lambda p: _edit(p, _set_attr("beam", "fanflat")), "source_origin"),
    "ground truth shape": (lambda p: _edit(p, _replace("entry/ctbayes/ground_truth", np.ones((5, 5)))), "ground truth has shape (5, 5)"),
    "negative pixel size": (lambda p: _edit(p, _set_attr("pixel_size", -1.0)), "pixel_size must be positive"),
    "3D without GPU": (lambda p: _edit(p, lambda f: (_replace(DATA, np.ones((20, 4, 48), np.float32))(f),
                                                     f.__delitem__("entry/ctbayes/ground_truth"),
                                                     _set_attr("beam", "cone")(f),
                                                     _set_attr("image_shape", [4, 32, 32])(f),
                                                     _set_attr("source_origin", 100.0)(f),
                                                     _set_attr("origin_detector", 50.0)(f))), "GPU"),
    "directory": (lambda p: p.mkdir() or p, "is a directory"),
    "missing file": (lambda p: p, "no such file"),
}


@pytest.mark.parametrize("case", list(CORPUS))
def test_bad_input_gets_one_sentence_and_no_output(case, tmp_path, capsys):
    make, expected = CORPUS[case]
    bad = make(tmp_path / "bad.h5")
    out = tmp_path / "result.h5"
    if case == "3D without GPU":
        from ctbayes.operators.astra_backend import cuda_available

        if cuda_available():
            pytest.skip("a GPU is present, so 3D scans are allowed")
    status = main(["reconstruct", str(bad), "-o", str(out), "--method", "fbp"])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert expected in err
    assert err.count("\n") == 0 and err.startswith("ctbayes: error: ")
    assert "Traceback" not in err
    assert str(bad) in err or case == "3D without GPU"
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".result")]


def test_the_installed_command_prints_no_traceback(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_text("garbage")
    proc = subprocess.run([sys.executable, "-m", "ctbayes", "reconstruct", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"ctbayes: error: {bad}: not an HDF5 file (expected an NXtomo scan file)."
    assert not Path(str(bad).replace(".h5", ".ctbayes.h5")).exists()


def test_valid_file_reconstructs(tmp_path, capsys):
    scan_path = _valid(tmp_path / "ok.h5")
    assert main(["reconstruct", str(scan_path), "--method", "fbp"]) == 0
    assert (tmp_path / "ok.ctbayes.h5").exists()
