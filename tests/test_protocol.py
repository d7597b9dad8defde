"""Protocol calibration files (`ctbayes calibrate -o`, `reconstruct --calibration`) and the
split-conformal quantile: the file applies exactly the learned numbers, refuses another
protocol and bad files in one sentence with no output, and the conformal coverage is the
exact finite-sample one."""

import hashlib
import json
import math

import numpy as np
import pytest

from ctbayes.calibration import calibration_target, fit_scale_and_edge
from ctbayes.cli import main
from ctbayes.conformal import conformal_quantile, conformal_rank, conformal_std_scale, coverage
from ctbayes.errors import InputError
from ctbayes.io import read_scan
from ctbayes.results import Reconstruction, read_result, write_result

TINY = ["--iterations", "40", "--channels", "8", "--skip-channels", "0,4", "--scales", "2",
        "--uncertainty", "mcdo", "--samples", "8", "--no-progress"]


# --- split-conformal quantile -----------------------------------------------------------

def test_conformal_quantile_exact_small_samples():
    scores = np.arange(9, 0, -1.0)  # 9, 8, ..., 1 (unsorted on purpose)
    assert conformal_rank(9, 0.1) == 9 and conformal_quantile(scores, 0.1) == 9.0
    assert conformal_rank(9, 0.2) == 8 and conformal_quantile(scores, 0.2) == 8.0
    assert conformal_rank(19, 0.1) == 18
    assert coverage(19, 0.1) == pytest.approx(0.9) and coverage(9, 0.25) == pytest.approx(0.8)
    with pytest.raises(InputError, match="too few"):
        conformal_quantile(scores[:8], 0.1)  # k = ceil(9 * 0.9) = 9 > 8
    # the interval mean +- q std is the Gaussian 90% interval of std * scale
    assert conformal_std_scale(1.6448536269514722, 0.1) == pytest.approx(1.0)


@pytest.mark.parametrize("n, alpha", [(19, 0.1), (9, 0.25), (199, 0.05)])
def test_conformal_coverage_on_iid_gaussian_z(n, alpha):
    """Exchangeable |z|: the new pixel is covered with probability k / (n + 1) exactly."""
    rng = np.random.default_rng(n)
    trials = 20000
    z = np.abs(rng.standard_normal((trials, n + 1)))
    q = np.sort(z[:, :n], axis=1)[:, conformal_rank(n, alpha) - 1]
    observed = np.mean(z[:, n] <= q)
    exact = coverage(n, alpha)
    assert exact >= 1 - alpha
    assert observed == pytest.approx(exact, abs=4 * math.sqrt(exact * (1 - exact) / trials))


# --- calibrate -o and reconstruct --calibration -----------------------------------------

@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Two simulated 32x32 scans of one protocol (20 views), each with a tiny DIP-MCDO
    result; and a scan of another protocol (30 views)."""
    folder = tmp_path_factory.mktemp("protocol")
    paths = {}
    for name, views, seed in (("a", 20, 1), ("b", 20, 2), ("other", 30, 3)):
        scan = folder / f"{name}.h5"
        assert main(["simulate", str(scan), "--phantom", "rectangles", "--size", "32",
                     "--views", str(views), "--seed", str(seed)]) == 0
        paths[name] = scan
    for name in ("a", "b"):
        assert main(["reconstruct", str(paths[name]), *TINY]) == 0
    return folder, paths


def _refused(capsys, argv, *outputs, mention=""):
    """The command exits 2 with one sentence on stderr that names `mention`, and writes none
    of the outputs."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ctbayes: error:") and "\n" not in err and mention in err, err
    for path in outputs:
        assert not path.exists()
    return err


def test_round_trip_applies_exactly_the_learned_calibration(fitted, capsys):
    folder, paths = fitted
    protocol = folder / "protocol.json"
    results = [folder / "a.ctbayes.h5", folder / "b.ctbayes.h5"]
    assert main(["calibrate", *map(str, results), "-o", str(protocol)]) == 0
    document = json.loads(protocol.read_text())
    assert document["scans"] == 2 and document["pixels"] == 2 * 32 * 32
    assert document["protocol"]["views"] == 20 and document["protocol"]["image_shape"] == [32, 32]
    assert document["protocol"]["uncertainty"] == "mcdo"
    scale, edge = (document["calibration"][k] for k in ("std_scale", "edge_std"))
    targets = [calibration_target(read_result(r), read_scan(s))
               for r, s in zip(results, (paths["a"], paths["b"]))]
    assert (scale, edge) == pytest.approx(fit_scale_and_edge(targets), rel=1e-9)
    assert scale > 1  # the tiny DIP's MC dropout is overconfident

    # the same scan reconstructed with the file and with the numbers given directly
    with_file, direct = folder / "with_file.h5", folder / "direct.h5"
    assert main(["reconstruct", str(paths["a"]), *TINY, "--calibration", str(protocol),
                 "-o", str(with_file)]) == 0
    assert main(["reconstruct", str(paths["a"]), *TINY, "--std-scale", repr(scale),
                 "--edge-std", repr(edge), "-o", str(direct)]) == 0
    applied, expected = read_result(with_file), read_result(direct)
    recorded = applied.uncertainty_settings()
    assert recorded["std_scale"] == scale
    assert recorded["edge_std"] == edge
    assert recorded["calibration"] == str(protocol)
    np.testing.assert_array_equal(applied.std, expected.std)
    np.testing.assert_array_equal(applied.mean, expected.mean)
    # against the uncalibrated std: not the same map
    assert not np.allclose(applied.std, read_result(results[0]).std)


def test_conformal_calibration_is_the_rank_statistic_of_abs_z(fitted):
    folder, paths = fitted
    protocol = folder / "conformal.json"
    results = [folder / "a.ctbayes.h5", folder / "b.ctbayes.h5"]
    assert main(["calibrate", *map(str, results), "--conformal", "0.1", "-o", str(protocol)]) == 0
    c = json.loads(protocol.read_text())["calibration"]
    z = np.concatenate([np.abs(read_scan(s).ground_truth - read_result(r).mean).ravel()
                        / read_result(r).std.ravel()
                        for r, s in zip(results, (paths["a"], paths["b"]))])
    k = math.ceil((z.size + 1) * 0.9)
    assert c["kind"] == "conformal" and c["alpha"] == 0.1 and c["edge_std"] == 0.0
    assert c["quantile"] == pytest.approx(np.sort(z)[k - 1], rel=1e-6)
    assert c["coverage"] == pytest.approx(k / (z.size + 1))
    assert c["std_scale"] == pytest.approx(c["quantile"] / 1.6448536269514722)
    # on the calibration pixels themselves the 90% interval then covers k of the n (no ties)
    assert np.mean(z <= c["quantile"]) == pytest.approx(k / z.size)


def test_reconstruct_refuses_another_protocol(fitted, capsys):
    folder, paths = fitted
    protocol = folder / "refuse.json"
    assert main(["calibrate", str(folder / "a.ctbayes.h5"), "-o", str(protocol)]) == 0
    out = folder / "refused.h5"
    _refused(capsys, ["reconstruct", str(paths["other"]), *TINY, "--calibration", str(protocol),
                      "-o", str(out)], out, mention="views 30 here, 20 in the calibration")
    laplace = [a if a != "mcdo" else "laplace" for a in TINY]
    _refused(capsys, ["reconstruct", str(paths["b"]), *laplace, "--calibration", str(protocol),
                      "-o", str(out)], out, mention="uncertainty laplace here, mcdo")
    _refused(capsys, ["reconstruct", str(paths["b"]), "--method", "fbp", "--calibration",
                      str(protocol), "-o", str(out)], out, mention="std map")
    _refused(capsys, ["reconstruct", str(paths["b"]), *TINY, "--calibration", str(protocol),
                      "--std-scale", "2", "-o", str(out)], out, mention="not both")


@pytest.mark.parametrize("content, mention", [
    ("{\"format\": \"ctbayes-protocol-calibration\", \"version\": 1, \"protocol\": {",
     "corrupt JSON"),
    ("{\"name\": \"something else\", \"values\": [1, 2]}", "not a ctbayes calibration"),
    ("[1, 2, 3]", "not a ctbayes calibration"),
    (None, "version 2"),
    (None, "std_scale"),
])
def test_reconstruct_refuses_bad_calibration_files(fitted, capsys, tmp_path, content, mention):
    folder, paths = fitted
    bad = tmp_path / "bad.json"
    if content is None:  # a real file, edited: a future version, or a broken number
        good = folder / "edited.json"
        if not good.exists():
            assert main(["calibrate", str(folder / "a.ctbayes.h5"), "-o", str(good)]) == 0
        document = json.loads(good.read_text())
        if mention == "version 2":
            document["version"] = 2
        else:
            document["calibration"]["std_scale"] = -1
        content = json.dumps(document)
    bad.write_text(content)
    out = tmp_path / "out.h5"
    err = _refused(capsys, ["reconstruct", str(paths["a"]), *TINY, "--calibration", str(bad),
                            "-o", str(out)], out, mention=mention)
    assert str(bad) in err


def test_calibrate_refuses_mixed_protocols(fitted, capsys):
    folder, paths = fitted
    # a result of the 30-view scan (its content does not matter: refused before any use)
    other = folder / "other.ctbayes.h5"
    a = read_result(folder / "a.ctbayes.h5")
    scan = read_scan(paths["other"])
    write_result(Reconstruction(mean=scan.ground_truth, method="dip", settings=a.settings,
                                timings={}, std=np.ones_like(scan.ground_truth)), other,
                 scan_path=paths["other"])
    out = folder / "mixed.json"
    _refused(capsys, ["calibrate", str(folder / "a.ctbayes.h5"), str(other), "-o", str(out)],
             out, mention="different protocols")
    _refused(capsys, ["calibrate", str(folder / "a.ctbayes.h5"), "--conformal", "0.1"],
             mention="-o")


def test_calibrate_refuses_to_write_over_one_of_its_results(fitted, capsys):
    folder, _ = fitted
    result = folder / "a.ctbayes.h5"
    before = hashlib.sha256(result.read_bytes()).hexdigest()
    err = _refused(capsys, ["calibrate", str(result), "-o", str(result)], mention=str(result))
    assert "input" in err
    assert hashlib.sha256(result.read_bytes()).hexdigest() == before
