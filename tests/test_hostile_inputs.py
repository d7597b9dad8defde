"""A corpus of hostile inputs: each case states what must happen and is checked end to end
through the CLI (in-process): the exit status, one sentence on stderr that names the file
(no traceback), no output file, temporary file or lock file left behind, and every input's
bytes unchanged (by SHA-256). Most cases fail before any reconstruction starts; the few
that must run use tiny settings.

Cases that need real processes (two concurrent writers, kill -9, SIGINT) are at the end of
this file and in tests/test_fault.py.
"""

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from ctbayes.cli import main
from ctbayes.io import write_scan
from ctbayes.operators import make_ray_transform
from ctbayes.scan import Scan
from tests.conftest import disk_phantom, small_geometry

DATA = "entry/instrument/detector/data"
ANGLES = "entry/sample/rotation_angle"
KEYS = "entry/instrument/detector/image_key"
GROUP = "entry/ctbayes"
FBP = ["--method", "fbp"]
TINY_DIP = ["--iterations", "5", "--uncertainty", "none", "--no-progress"]


# -- makers: each writes its input(s) into the folder `d` and returns the path to name -----------
def valid(d, name="scan.h5"):
    g = small_geometry("parallel")
    x = disk_phantom()
    return write_scan(Scan(np.asarray(make_ray_transform(g)(x)), g, ground_truth=x), d / name)


def edited(fn, name="scan.h5"):
    def make(d):
        path = valid(d, name)
        with h5py.File(path, "r+") as f:
            fn(f)
        return path
    return make


def replace(name, value):
    def fn(f):
        del f[name]
        f[name] = value
    return fn


def attr(name, value):
    def fn(f):
        f[GROUP].attrs[name] = value
    return fn


def raw_counts(flat=1000.0, dark=10.0, low=None, nan_flat=False):
    """An NXtomo file of raw counts: 2 darks, 2 flats and 20 projections of the disk."""
    def fn(f):
        line = f[DATA][()]
        angles = f[ANGLES][()]
        counts = dark + (flat - dark) * np.exp(-0.05 * line)
        if low is not None:
            counts[3, :5] = low
        flats = np.full((2, line.shape[1]), flat)
        if nan_flat:
            flats[0, 0] = np.nan
        frames = np.concatenate([np.full((2, line.shape[1]), dark), flats, counts])
        replace(DATA, frames.astype(np.float32))(f)
        replace(KEYS, np.r_[[2, 2, 1, 1], np.zeros(len(angles), int)].astype(np.int32))(f)
        replace(ANGLES, np.r_[np.zeros(4), angles])(f)
    return edited(fn)


def dxchange(flat=1000.0, dark=10.0, theta=None, cols=48, low=None, name="tooth.h5"):
    def make(d):
        views = 30
        rng = np.random.default_rng(0)
        yy = np.arange(cols) - (cols - 1) / 2
        thick = np.clip(100 - yy ** 2, 0, None) ** 0.5 / 10 if cols > 1 else np.ones(1)
        counts = dark + (flat - dark) * np.exp(-thick)[None, None, :] * np.ones((views, 2, 1))
        counts = counts + rng.normal(0, 0.1, counts.shape)
        if low is not None:
            counts[2, :, :4] = low
        with h5py.File(d / name, "w") as f:
            f["exchange/data"] = counts.astype(np.float32)
            f["exchange/data_white"] = np.full((3, 2, cols), flat, np.float32)
            f["exchange/data_dark"] = np.full((3, 2, cols), dark, np.float32)
            f["exchange/theta"] = np.linspace(0, 180, views, endpoint=False) if theta is None \
                else np.asarray(theta, float)
        return d / name
    return make


def matlab(angles, name="htc.mat"):
    def make(d):
        params = {"angles": np.asarray(angles, float), "numDetectorsPost": 8,
                  "distanceSourceOrigin": 400.0, "distanceSourceDetector": 550.0,
                  "pixelSizePost": 0.2, "effectivePixelSizePost": 0.15}
        scipy.io.savemat(d / name, {"CtDataFull": {"sinogram": np.ones((len(angles), 8)),
                                                   "parameters": params}})
        return d / name
    return make


def symlink_loop(d):
    (d / "a.h5").symlink_to(d / "b.h5")
    (d / "b.h5").symlink_to(d / "a.h5")
    return d / "a.h5"


def dangling(d):
    (d / "scan.h5").symlink_to(d / "gone.h5")
    return d / "scan.h5"


def external_link(d):
    path = valid(d)
    with h5py.File(path, "r+") as f:
        del f[DATA]
        f[DATA] = h5py.ExternalLink("missing.h5", "/data")
    return path


def soft_link(d):
    path = valid(d)
    with h5py.File(path, "r+") as f:
        del f[ANGLES]
        f[ANGLES] = h5py.SoftLink("/entry/sample/nowhere")
    return path


def result_file(d):
    """A scan and its FBP result (made by the CLI itself)."""
    scan = valid(d)
    assert main(["reconstruct", str(scan), "-o", str(d / "fbp.ctbayes.h5")] + FBP) == 0
    return d / "fbp.ctbayes.h5"


def link(kind):
    """The scan and a symbolic or hard link to it: the output named is the link."""
    def make(d):
        scan = valid(d)
        (d / "alias.h5").symlink_to(scan) if kind == "sym" else os.link(scan, d / "alias.h5")
        return scan
    return make


def held_lock(output_name):
    """A valid scan, and the lock of `output_name` held by another open file (another
    writer): flock locks of two open files conflict even within one process."""
    def make(d):
        import fcntl

        scan = valid(d)
        fd = os.open(d / f"{output_name}.lock", os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        HELD.append(fd)
        return scan
    return make


HELD = []

# name: (maker, argv with {in} = the input the maker returns and {d} = the folder, exit
#        status, expected words of the message). The message must also name a file.
CASES = {
    # D1: the output is the input, by any path
    "reconstruct X -o X": (valid, ["reconstruct", "{in}", "-o", "{in}"] + FBP, 2, "is the input file"),
    "reconstruct X -o X (dip)": (valid, ["reconstruct", "{in}", "-o", "{in}"], 2, "is the input file"),
    "reconstruct X -o ./X": (valid, ["reconstruct", "{in}", "-o", "{d}/./scan.h5"] + FBP, 2, "is the input file"),
    "reconstruct X -o sub/../X": (lambda d: (os.mkdir(d / "sub"), valid(d))[1],
                                  ["reconstruct", "{in}", "-o", "{d}/sub/../scan.h5"] + FBP, 2, "is the input file"),
    "reconstruct X -o symlink": (link("sym"), ["reconstruct", "{in}", "-o", "{d}/alias.h5"] + FBP, 2, "is the input file"),
    "reconstruct X -o hard link": (link("hard"), ["reconstruct", "{in}", "-o", "{d}/alias.h5"] + FBP, 2, "is the input file"),
    "reconstruct symlink -o X": (link("sym"), ["reconstruct", "{d}/alias.h5", "-o", "{in}"] + FBP, 2, "is the input file"),
    "reconstruct --resume X -o X": (valid, ["reconstruct", "{in}", "-o", "{in}", "--resume"] + TINY_DIP, 2, "is the input file"),
    "import X X": (valid, ["import", "{in}", "{in}"], 2, "is the input file"),
    "import dxchange X X": (dxchange(), ["import", "{in}", "{in}"], 2, "is the input file"),
    "import dxchange X hard link": (lambda d: (os.link(dxchange()(d), d / "copy.h5"), d / "tooth.h5")[1],
                                    ["import", "{in}", "{d}/copy.h5"], 2, "is the input file"),
    "import mat X X": (matlab(np.arange(8) * 45.0), ["import", "{in}", "{in}"], 2, "is the input file"),
    "design X -o X": (valid, ["design", "{in}", "-o", "{in}", "--initial", "2", "--acquire", "1"], 2, "is the input file"),
    "design X -o symlink": (link("sym"), ["design", "{in}", "-o", "{d}/alias.h5", "--initial", "2",
                                          "--acquire", "1"], 2, "is the input file"),
    # D7: another writer holds the output's lock
    "reconstruct while locked": (held_lock("out.h5"), ["reconstruct", "{in}", "-o", "{d}/out.h5"] + FBP, 2, "lock file"),
    "import while locked": (held_lock("out.h5"), ["import", "{in}", "{d}/out.h5"], 2, "lock file"),
    "simulate while locked": (held_lock("out.h5"), ["simulate", "{d}/out.h5", "--size", "16"], 2, "lock file"),
    "design while locked": (held_lock("log.h5"), ["design", "{in}", "-o", "{d}/log.h5", "--initial", "2",
                                                 "--acquire", "1"], 2, "lock file"),
    # D2: raw counts that physics does not allow
    "darks above flats": (raw_counts(flat=10.0, dark=1000.0), ["reconstruct", "{in}", "-o", "{d}/o.h5"] + FBP, 2,
                          "flat field that is not above the dark field"),
    "flats equal darks": (raw_counts(flat=10.0, dark=10.0), ["reconstruct", "{in}", "-o", "{d}/o.h5"] + FBP, 2,
                          "not above the dark field"),
    "negative flats": (raw_counts(flat=-100.0, dark=0.0), ["reconstruct", "{in}", "-o", "{d}/o.h5"] + FBP, 2,
                       "negative values"),
    "NaN flat": (raw_counts(nan_flat=True), ["reconstruct", "{in}", "-o", "{d}/o.h5"] + FBP, 2, "flat fields"),
    "dxchange darks above flats": (dxchange(flat=10.0, dark=1000.0), ["import", "{in}", "{d}/o.h5"], 2,
                                   "not above the dark field"),
    "dxchange negative flats": (dxchange(flat=-5.0, dark=0.0), ["import", "{in}", "{d}/o.h5"], 2, "negative values"),
    "dxchange flats equal darks": (dxchange(flat=10.0, dark=10.0), ["import", "{in}", "{d}/o.h5"], 2,
                                   "not above the dark field"),
    # D3: values too large for float32 arithmetic
    "data of 1e38 (fbp)": (edited(replace(DATA, np.full((20, 48), 1e38, np.float32))),
                           ["reconstruct", "{in}", "-o", "{d}/o.h5"] + FBP, 2, "too large for float32"),
    "data of 1e38 (dip)": (edited(replace(DATA, np.full((20, 48), 1e38, np.float32))),
                           ["reconstruct", "{in}", "-o", "{d}/o.h5"] + TINY_DIP, 2, "too large for float32"),
    "data of -1e20": (edited(replace(DATA, np.full((20, 48), -1e20, np.float32))),
                      ["reconstruct", "{in}", "-o", "{d}/o.h5"] + FBP, 2, "too large for float32"),
    "data of 1e38 (info)": (edited(replace(DATA, np.full((20, 48), 1e38, np.float32))), ["info", "{in}"], 2,
                            "too large for float32"),
    "data of -inf": (edited(lambda f: f[DATA].__setitem__((1, 1), -np.inf)),
                     ["reconstruct", "{in}", "-o", "{d}/o.h5"] + FBP, 2, "NaN or infinite"),
    "float64 data beyond float32": (edited(replace(DATA, np.full((20, 48), 1e300))),
                                    ["reconstruct", "{in}", "-o", "{d}/o.h5"] + FBP, 2, "NaN or infinite"),
    "ground truth NaN": (edited(lambda f: f[f"{GROUP}/ground_truth"].__setitem__((0, 0), np.nan)),
                         ["reconstruct", "{in}", "-o", "{d}/o.h5"] + FBP, 2, "ground truth contains NaN"),
    "zero sinogram (dip)": (edited(replace(DATA, np.zeros((20, 48), np.float32))),
                            ["reconstruct", "{in}", "-o", "{d}/o.h5"] + TINY_DIP, 2, "carries no signal"),
    # D4: fields that cannot describe a scan
    "all angles equal": (edited(replace(ANGLES, np.full(20, 30.0))),
                         ["reconstruct", "{in}", "-o", "{d}/o.h5"] + FBP, 2, "are equal (30 degrees)"),
    "repeated angles (fbp)": (edited(replace(ANGLES, np.repeat(np.arange(10) * 18.0, 2))),
                              ["reconstruct", "{in}", "-o", "{d}/o.h5"] + FBP, 2, "distinct projection angles"),
    "one detector column": (edited(lambda f: (replace(DATA, np.ones((20, 1), np.float32))(f),
                                              f.__delitem__(f"{GROUP}/ground_truth"),
                                              f[GROUP].attrs.__setitem__("image_shape", [1, 1]))),
                            ["reconstruct", "{in}", "-o", "{d}/o.h5"] + FBP, 2, "1 detector column"),
    "pixel_size 'abc'": (edited(attr("pixel_size", "abc")), ["reconstruct", "{in}", "-o", "{d}/o.h5"] + FBP, 2,
                         "attribute pixel_size of /entry/ctbayes is 'abc'"),
    "det_spacing 'abc'": (edited(attr("det_spacing", "abc")), ["info", "{in}"], 2, "attribute det_spacing"),
    "image_shape 'abc'": (edited(attr("image_shape", "abc")), ["info", "{in}"], 2, "attribute image_shape"),
    "image_shape fractional": (edited(attr("image_shape", [32.5, 32.0])), ["info", "{in}"], 2, "whole numbers"),
    "noise_std 'x'": (edited(attr("noise_std", "x")), ["info", "{in}"], 2, "attribute noise_std"),
    "source_origin array": (edited(lambda f: (attr("beam", "fanflat")(f), attr("source_origin", [1.0, 2.0])(f))),
                            ["info", "{in}"], 2, "attribute source_origin"),
    "x_pixel_size of 3 values": (edited(replace("entry/instrument/detector/x_pixel_size", [1.0, 2.0, 3.0])),
                                 ["info", "{in}"], 2, "x_pixel_size has shape (3,)"),
    "image_key length": (edited(replace(KEYS, np.zeros(7, np.int32))), ["info", "{in}"], 2, "has 7 entries"),
    "image_key darks only": (edited(replace(KEYS, np.r_[2, np.zeros(19)].astype(np.int32))), ["info", "{in}"], 2,
                             "no flat fields"),
    "image_key no projections": (edited(replace(KEYS, np.ones(20, np.int32))), ["info", "{in}"], 2,
                                 "marks no projections"),
    "dxchange one detector column": (dxchange(cols=1), ["import", "{in}", "{d}/o.h5"], 2, "1 detector column"),
    "dxchange all theta equal": (dxchange(theta=np.full(30, 5.0)), ["import", "{in}", "{d}/o.h5"], 2, "are equal"),
    # D5: radians labelled degrees
    "angles 0..pi as degrees": (edited(replace(ANGLES, np.linspace(0, np.pi, 20, endpoint=False))),
                                ["reconstruct", "{in}", "-o", "{d}/o.h5"] + FBP, 2, "looks like radians"),
    "angles 0..2pi as degrees": (edited(replace(ANGLES, np.linspace(0, 2 * np.pi, 20))),
                                 ["reconstruct", "{in}", "-o", "{d}/o.h5"] + FBP, 2, "looks like radians"),
    "arc of 5 degrees": (edited(replace(ANGLES, np.linspace(40, 45, 20))),
                         ["reconstruct", "{in}", "-o", "{d}/o.h5"] + FBP, 2, "span only 5 degrees"),
    "dxchange theta in radians": (dxchange(theta=np.linspace(0, np.pi, 30, endpoint=False)),
                                  ["import", "{in}", "{d}/o.h5"], 2, "looks like radians"),
    "HTC2022 angles in radians": (matlab(np.linspace(0, 2 * np.pi, 8)), ["import", "{in}", "{d}/o.h5"], 2,
                                  "looks like radians"),
    # D6: messages that must say what is wrong
    "symlink loop (reconstruct)": (symlink_loop, ["reconstruct", "{in}", "-o", "{d}/o.h5"] + FBP, 2,
                                   "a loop of symbolic links"),
    "symlink loop (import)": (symlink_loop, ["import", "{in}", "{d}/o.h5"], 2, "a loop of symbolic links"),
    "symlink loop (info)": (symlink_loop, ["info", "{in}"], 2, "a loop of symbolic links"),
    "symlink loop (calibrate)": (symlink_loop, ["calibrate", "{in}"], 2, "a loop of symbolic links"),
    "dangling symlink": (dangling, ["reconstruct", "{in}", "-o", "{d}/o.h5"] + FBP, 2,
                         "a symbolic link to"),
    "external link to a missing file": (external_link, ["reconstruct", "{in}", "-o", "{d}/o.h5"] + FBP, 2,
                                        "is an external link to /data in missing.h5, which cannot be opened"),
    "dangling soft link": (soft_link, ["info", "{in}"], 2, "is a soft link to /entry/sample/nowhere"),
    "calibrate a scan file": (valid, ["calibrate", "{in}"], 2, "no /reconstruction/mean, not a ctbayes result file"),
    "reconstruct into /proc": (valid, ["reconstruct", "{in}", "-o", "/proc/ctbayes-x.h5"] + FBP, 2,
                               "a file cannot be made in its folder"),
    "import into /proc": (valid, ["import", "{in}", "/proc/ctbayes-x.h5"], 2, "a file cannot be made"),
    "simulate into /proc": (valid, ["simulate", "/proc/ctbayes-x.h5", "--size", "16"], 2, "a file cannot be made"),
    "design into /proc": (valid, ["design", "{in}", "-o", "/proc/ctbayes-x.h5", "--initial", "2",
                                  "--acquire", "1"], 2, "a file cannot be made"),
    "design more views than the scan has": (valid, ["design", "{in}", "-o", "{d}/log.h5", "--initial", "15",
                                                    "--acquire", "10", "--no-progress"], 2,
                                            "has 20 views, fewer than initial (15) + acquire (10)"),
    "directory as scan": (lambda d: (os.mkdir(d / "dir.h5"), d / "dir.h5")[1],
                          ["reconstruct", "{in}", "-o", "{d}/o.h5"] + FBP, 2, "is a directory"),
    "fifo as scan": (lambda d: (os.mkfifo(d / "fifo.h5"), d / "fifo.h5")[1],
                     ["info", "{in}"], 2, "is not a regular file"),
    "unreadable result of calibrate": (result_file, ["calibrate", "{in}", "{d}/scan.h5"], 2,
                                       "not a ctbayes result file"),
}


def _all_below_dark(f):
    """Raw counts whose projections all lie below the dark field."""
    line = f[DATA][()]
    frames = np.concatenate([np.full((2, 48), 10.0), np.full((2, 48), 1000.0), np.full(line.shape, 5.0)])
    replace(DATA, frames.astype(np.float32))(f)
    replace(KEYS, np.r_[[2, 2, 1, 1], np.zeros(20, int)].astype(np.int32))(f)
    replace(ANGLES, np.r_[np.zeros(4), np.linspace(0, 180, 20, endpoint=False)])(f)


CASES["all projections at or below dark"] = (edited(_all_below_dark), ["info", "{in}"], 2,
                                            "at or below the dark field")


def _snapshot(folder: Path) -> dict:
    """Every entry under `folder`: file bytes by SHA-256, links by target."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            out[path.name] = "-> " + os.readlink(path)
        elif path.is_file():
            out[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[path.name] = "dir" if path.is_dir() else "special"
    return out


def test_the_corpus_is_large():
    assert len(CASES) >= 60


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input(case, tmp_path, capsys):
    make, argv, status, expected = CASES[case]
    d = tmp_path / "in"
    d.mkdir()
    source = make(d)
    capsys.readouterr()
    before = _snapshot(d)
    argv = [a.format(**{"in": source, "d": d}) for a in argv]
    try:
        got = main(argv)
    finally:
        while HELD:
            os.close(HELD.pop())
    # phase lines ("ctbayes: DIP fit ...", `ctbayes.progress`) may precede the error
    err = "\n".join(line for line in capsys.readouterr().err.strip().splitlines()
                    if not line.endswith(" ...")).strip()
    assert got == status, err
    assert err.startswith("ctbayes: error: ") and "\n" not in err, err
    assert "Traceback" not in err and expected in err, err
    named = [a for a in argv if "/" in a]
    assert any(a in err or Path(a).name in err for a in named), err
    assert _snapshot(d) == before  # no output, temporary or lock file; inputs unchanged
    assert not Path("/proc/ctbayes-x.h5").exists()


# -- raw counts that can be used after clipping: a warning that counts them, and a result -------
@pytest.mark.parametrize("make, argv", [
    (raw_counts(flat=1000.0, dark=10.0, low=2.0), ["reconstruct", "{in}", "-o", "{d}/o.h5"] + FBP),
    (raw_counts(flat=1000.0, dark=10.0, low=-50.0), ["reconstruct", "{in}", "-o", "{d}/o.h5"] + FBP),
    (dxchange(low=-3.0), ["import", "{in}", "{d}/o.h5", "--center", "23.5"]),
], ids=["counts below dark", "negative counts", "dxchange negative counts"])
def test_clipped_counts_are_counted_in_a_warning(make, argv, tmp_path, capsys):
    source = make(tmp_path)
    before = hashlib.sha256(source.read_bytes()).hexdigest()
    assert main([a.format(**{"in": source, "d": tmp_path}) for a in argv]) == 0
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith("ctbayes: warning: ")]
    assert len(lines) == 1, err
    clipped = 5 if "reconstruct" in argv else 4  # values made low by the maker (one row read)
    assert str(source) in lines[0] and f"include {clipped} of " in lines[0] and "clipped" in lines[0]
    assert (tmp_path / "o.h5").exists()
    assert hashlib.sha256(source.read_bytes()).hexdigest() == before


def test_a_non_finite_result_is_an_error_not_a_file(tmp_path):
    from ctbayes.errors import InputError
    from ctbayes.results import Reconstruction, write_result

    bad = Reconstruction(mean=np.full((4, 4), np.nan, np.float32), method="fbp", settings={},
                         timings={})
    with pytest.raises(InputError, match="scan.h5: the fbp reconstruction's image contains NaN"):
        write_result(bad, tmp_path / "r.h5", scan_path="scan.h5")
    assert list(tmp_path.iterdir()) == []


def test_the_rotation_centre_of_an_import_is_printed_and_stored(tmp_path, capsys):
    source = dxchange()(tmp_path)
    assert main(["import", str(source), str(tmp_path / "o.h5")]) == 0
    out = capsys.readouterr().out
    line = [x for x in out.splitlines() if x.startswith("rotation centre: detector column ")]
    assert len(line) == 1 and "(estimated)" in line[0], out
    printed = float(line[0].split("detector column ")[1].split()[0])
    with h5py.File(tmp_path / "o.h5") as f:
        stored = float(f["entry/ctbayes/provenance"].attrs["rotation_center"])
    assert abs(printed - stored) < 0.01 and abs(stored - 23.5) < 1.0  # the disk is centred
    from ctbayes.io import read_scan

    assert read_scan(tmp_path / "o.h5").provenance["rotation_center"] == stored


def test_debug_is_accepted_after_the_subcommand(tmp_path, capsys):
    scan = valid(tmp_path)
    assert main(["reconstruct", str(scan), "--debug", "-o", str(tmp_path / "o.h5")] + FBP) == 0
    assert main(["info", str(scan), "--debug"]) == 0
    with pytest.raises(Exception):  # --debug shows the traceback of an internal error
        import ctbayes.cli

        original = ctbayes.cli.COMMANDS["info"]
        ctbayes.cli.COMMANDS["info"] = lambda args: 1 / 0
        try:
            main(["info", str(scan), "--debug"])
        finally:
            ctbayes.cli.COMMANDS["info"] = original


# -- two real writers at once --------------------------------------------------------------------
def test_two_concurrent_writers_exactly_one_runs(tmp_path):
    scan = valid(tmp_path)
    out = tmp_path / "out.h5"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), CTBAYES_CACHE_DIR="off")
    cmd = [sys.executable, "-m", "ctbayes", "reconstruct", str(scan), "-o", str(out)] + FBP
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lock = tmp_path / "out.h5.lock"
    deadline = time.time() + 120
    while not lock.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)  # the first writer holds the lock while the second tries
    try:
        assert lock.exists(), "the first writer took no lock"
        second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    first_out, first_err = first.communicate(timeout=600)
    assert first.returncode == 0, first_err
    assert second.returncode == 2
    err = second.stderr.strip()
    assert err == (f"ctbayes: error: Another ctbayes run is writing the result file {out} (its lock "
                   f"file {lock} is held); wait for that run to finish or choose another output "
                   "file."), err
    assert first_out.count("wrote") == 1 and "wrote" not in second.stdout
    assert out.exists() and not lock.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5", "scan.h5"]
