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


def _matlab(path):
    import scipy.io

    scipy.io.savemat(path, {"CtDataFull": {"sinogram": np.ones((4, 8))}})
    return path


def _dxchange(path):
    with h5py.File(path, "w") as f:
        f["exchange/data"] = np.ones((4, 2, 8), np.float32)
    return path


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
    "MATLAB file": (_matlab, "an HTC2022 .mat file, not an NXtomo scan; "
                    "convert it first with `ctbayes import"),
    "Data Exchange file": (_dxchange, "a Data Exchange HDF5 file, not an NXtomo scan; "
                           "convert it first"),
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


def _must_not_run(*args, **kwargs):
    raise AssertionError("the command started its work despite a bad setting")


BAD_SETTINGS = {  # flags after `reconstruct SCAN`: the error, raised before any reconstruction
    "output is a directory": (["-o", "{tmp}"], "is a directory; give a file name"),
    "output under a file": (["-o", "{tmp}/ok.h5/result.h5"], "a file of that name is in the way"),
    "figures onto a file": (["--figures", "{tmp}/ok.h5"], "a file of that name is in the way"),
    "negative TV weight": (["--method", "tv", "--tv", "-1"], "TV weight must be a number >= 0"),
    "no TV iterations": (["--method", "tv", "--tv-iterations", "0"], "at least 1 iteration"),
    "negative EM cycles": (["--em-cycles", "-1"], "em_cycles must be >= 0, got -1"),
    "negative learning rate": (["--lr", "-1"], "lr must be positive, got -1.0."),
    "empty ensemble": (["--ensemble", "0"], "at least 1 member, got 0"),
    "zero std scale": (["--std-scale", "0"], "std scale must be a positive number, got 0.0"),
    "NaN std scale": (["--std-scale", "nan"], "std scale must be a positive number, got nan"),
    "ensemble of TV": (["--method", "tv", "--ensemble", "2"], "needs the dip method"),
    "ensemble without uncertainty": (["--uncertainty", "none", "--ensemble", "2"],
                                     "an uncertainty method other than none"),
}


@pytest.mark.parametrize("case", list(BAD_SETTINGS))
def test_bad_settings_fail_before_the_work(case, tmp_path, capsys, monkeypatch):
    import ctbayes.reconstruct

    monkeypatch.setattr(ctbayes.reconstruct, "reconstruct", _must_not_run)
    scan_path = _valid(tmp_path / "ok.h5")
    flags, expected = BAD_SETTINGS[case]
    status = main(["reconstruct", str(scan_path)] + [f.format(tmp=tmp_path) for f in flags])
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    assert expected in err and err.count("\n") == 0 and err.startswith("ctbayes: error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.h5"]


def test_exact_solver_too_large_is_refused_before_the_dip_fit(tmp_path, capsys, monkeypatch):
    import ctbayes.laplace.exact
    import ctbayes.reconstruct
    from ctbayes.dip.fit import DIPConfig, parameter_count

    monkeypatch.setattr(ctbayes.reconstruct, "fit_dip", _must_not_run)
    scan_path = _valid(tmp_path / "ok.h5")
    g = small_geometry("parallel")
    pixels, data = int(np.prod(g.image_shape)), int(np.prod(g.sinogram_shape))
    d = parameter_count(DIPConfig())
    monkeypatch.setattr(ctbayes.laplace.exact, "EXACT_MAX_BYTES", 8 * d * (pixels + data) - 1)
    status = main(["reconstruct", str(scan_path), "--solver", "exact", "-o", str(tmp_path / "r.h5")])
    err = capsys.readouterr().err.strip()
    assert status != 0 and err.count("\n") == 0, err
    assert f"{pixels} pixels and {data} data by {d} parameters" in err and "cg or sgd" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.h5"]


def test_other_commands_check_their_destination_first(tmp_path, capsys, monkeypatch):
    import ctbayes.design.loop
    import ctbayes.simulate

    monkeypatch.setattr(ctbayes.design.loop, "run_design", _must_not_run)
    monkeypatch.setattr(ctbayes.simulate, "simulate_scan", _must_not_run)
    scan_path = _valid(tmp_path / "ok.h5")
    for argv, what in ((["simulate", str(tmp_path)], "scan file"),
                       (["design", str(scan_path), "-o", str(tmp_path), "--initial", "2",
                         "--acquire", "1"], "design log"),
                       (["design", str(scan_path), "-o", str(tmp_path / "log.h5"), "--initial",
                         "2", "--acquire", "1", "--figures", str(scan_path)], "figure directory")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("ctbayes: error: ") and what in err and err.count("\n") == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.h5"]


def test_calibrate_refuses_files_without_a_scored_std_map(tmp_path, capsys):
    """calibrate reads result files: a missing, empty, non-HDF5 or foreign HDF5 file, and
    a result with no z_rms (FBP has no std map), each get one sentence and exit status 2."""
    scan_path = _valid(tmp_path / "ok.h5")
    fbp = tmp_path / "fbp.h5"
    assert main(["reconstruct", str(scan_path), "--method", "fbp", "-o", str(fbp)]) == 0
    (tmp_path / "empty.h5").write_bytes(b"")
    (tmp_path / "text.h5").write_text("not a result")
    cases = {"missing.h5": "no such result file", "empty.h5": "not an HDF5 file",
             "text.h5": "not an HDF5 file", "ok.h5": "no /reconstruction/mean",
             "fbp.h5": "has no z_rms metric"}
    capsys.readouterr()
    for name, expected in cases.items():
        assert main(["calibrate", str(tmp_path / name)]) == 2, name
        err = capsys.readouterr().err.strip()
        assert err.startswith("ctbayes: error: ") and expected in err, err
        assert err.count("\n") == 0


@pytest.mark.parametrize("error", [MemoryError("Unable to allocate 74.5 GiB"),
                                   RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating "
                                                "1030086799552 bytes.\nXLA details")])
def test_running_out_of_memory_gets_one_sentence(error, tmp_path, capsys, monkeypatch):
    import ctbayes.reconstruct

    def exhaust(*args, **kwargs):
        raise error

    monkeypatch.setattr(ctbayes.reconstruct, "reconstruct", exhaust)
    status = main(["reconstruct", str(_valid(tmp_path / "ok.h5"))])
    err = capsys.readouterr().err.strip()
    assert status == 1 and err.count("\n") == 0, err
    assert err.startswith("ctbayes: error: not enough memory (") and "smaller image" in err
    assert str(error).splitlines()[0] in err
