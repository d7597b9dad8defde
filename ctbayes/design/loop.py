"""Retrospective design on a dense scan: every view is a candidate, the loop reveals the
chosen views' real measurements, and logs each step; checkpoints make it resumable.

The loop starts from `initial` equidistant views and acquires `acquire` more, `per_step` at
a time, with one `AngleDesigner` (the "equidistant" baseline instead measures the
equidistant set of each budget). After every step it records the measured views, the
reconstruction and its PSNR/SSIM against the reference (the scan's ground truth by
default), and rewrites the log file atomically with the designer's state: `resume=True`
continues an interrupted run from its last completed step, with the same result as an
uninterrupted run.

Log file (HDF5), one group per strategy, `/runs/<strategy>`: attributes `config` (JSON),
`scan` (a fingerprint of the sinogram and geometry) and `complete`; datasets `num_angles`,
`views` (steps x max angles, padded with -1), `new_views` (padded with -1), `psnr`, `ssim`,
`seconds` (cumulative compute time), `reconstructions` (steps x H x W), `scores` (the
acquisition scores of each step's first pick, NaN for baselines) and `state/` (the designer).
`/candidate_angles` holds the candidates in radians.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import h5py
import numpy as np

from ctbayes.design.acquisition import equidistant_views
from ctbayes.design.designer import AngleDesigner, DesignerConfig
from ctbayes.errors import InputError
from ctbayes.io.atomic import atomic_path
from ctbayes.metrics import psnr, ssim
from ctbayes.scan import data_fingerprint


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """initial equidistant views, then `acquire` more, `per_step` per step."""

    initial: int = 5
    acquire: int = 30
    per_step: int = 1
    designer: DesignerConfig = DesignerConfig()

    def check(self, num_candidates: int, source: str = "<memory>") -> None:
        """InputError unless the settings fit a scan of `num_candidates` views (`source`: the
        scan's file, named in the message)."""
        for name in ("initial", "per_step"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise InputError(f"The design's {name} must be a positive integer, got {value!r}.")
        if isinstance(self.acquire, bool) or not isinstance(self.acquire, (int, np.integer)) \
                or self.acquire < 0:
            raise InputError(f"The number of views to acquire must be >= 0, got {self.acquire!r}.")
        if self.initial + self.acquire > num_candidates:
            scan = "The scan" if source == "<memory>" else f"The scan {source}"
            raise InputError(f"{scan} has {num_candidates} views, fewer than initial "
                             f"({self.initial}) + acquire ({self.acquire}).")

    def to_json(self) -> str:
        """The settings as JSON, the designer's and its posterior's nested."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True, default=list)


@dataclasses.dataclass
class DesignRun:
    """The record of one strategy's run; arrays have one entry per step (step 0: initial)."""

    strategy: str
    candidate_angles: np.ndarray
    num_angles: np.ndarray
    views: list
    new_views: list
    psnr: np.ndarray
    ssim: np.ndarray
    seconds: np.ndarray
    reconstructions: np.ndarray
    scores: np.ndarray
    config: dict
    complete: bool

    def psnr_at(self, budget: int) -> float:
        """PSNR with `budget` angles (NaN if that budget was not reached)."""
        hit = np.flatnonzero(self.num_angles == budget)
        return float(self.psnr[hit[0]]) if len(hit) else float("nan")

    def angles_to_reach(self, target: float) -> float:
        """The fewest angles at which the PSNR reaches `target` (NaN if it never does)."""
        hit = np.flatnonzero(self.psnr >= target - 1e-9)
        return float(self.num_angles[hit[0]]) if len(hit) else float("nan")


def scan_fingerprint(scan) -> str:
    """A hash of the scan's geometry and data: a log resumes only on the same scan."""
    return data_fingerprint(scan.geometry, scan.sinogram)[:32]


# -- the log file -------------------------------------------------------------------------------
def _pad(rows, width) -> np.ndarray:
    out = -np.ones((len(rows), max(width, 1)), np.int64)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def _write(path: Path, run: DesignRun, state: dict, fingerprint: str) -> None:
    with atomic_path(path) as tmp:
        if path.exists():
            shutil.copyfile(path, tmp)
        with h5py.File(tmp, "a") as f:
            f.attrs["format"] = "ctbayes-design-log"
            if "candidate_angles" not in f:
                f["candidate_angles"] = run.candidate_angles
            name = f"runs/{run.strategy}"
            if name in f:
                del f[name]
            g = f.create_group(name)
            g.attrs.update(config=json.dumps(run.config, sort_keys=True), scan=fingerprint,
                           complete=run.complete, strategy=run.strategy)
            g["num_angles"] = run.num_angles
            g["views"] = _pad(run.views, max(map(len, run.views)))
            g["new_views"] = _pad(run.new_views, max(map(len, run.new_views)))
            for key in ("psnr", "ssim", "seconds", "reconstructions", "scores"):
                g.create_dataset(key, data=getattr(run, key))
            s = g.create_group("state")
            for key, value in state.items():
                if isinstance(value, list):
                    for i, leaf in enumerate(value):
                        s[f"{key}/{i}"] = leaf
                else:
                    s[key] = value


def _read_state(group) -> dict:
    state = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            head, _, tail = name.rpartition("/")
            if tail.isdigit():
                state.setdefault(head, {})[int(tail)] = obj[()]
            else:
                state[name] = obj[()]

    group.visititems(visit)
    return {k: [v[i] for i in sorted(v)] if isinstance(v, dict) else v for k, v in state.items()}


def read_log(path, strategy: str | None = None):
    """All runs of a log file as {strategy: DesignRun}, or the one named `strategy`."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such design log.")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != "ctbayes-design-log" or "runs" not in f:
                raise InputError(f"{path}: not a ctbayes design log.")
            runs = {name: _read_run(f, name) for name in f["runs"]}
    except OSError as err:
        raise InputError(f"{path}: cannot read the design log ({err}).") from None
    if strategy is None:
        return runs
    if strategy not in runs:
        raise InputError(f"{path}: has no run of strategy {strategy!r} (it has {', '.join(runs)}).")
    return runs[strategy]


def _read_run(f, name) -> DesignRun:
    g = f["runs"][name]
    unpad = [r[r >= 0] for r in g["views"][()]]
    new = [r[r >= 0] for r in g["new_views"][()]]
    return DesignRun(name, f["candidate_angles"][()], g["num_angles"][()], unpad, new,
                     g["psnr"][()], g["ssim"][()], g["seconds"][()], g["reconstructions"][()],
                     g["scores"][()], json.loads(g.attrs["config"]), bool(g.attrs["complete"]))


# -- the loop -----------------------------------------------------------------------------------
def run_design(scan, config: LoopConfig = LoopConfig(), log=None, *, resume: bool = False,
               reference=None, callback=None,
               progress: bool = False) -> DesignRun:
    """Run one strategy (config.designer.acquisition) on a dense scan; see the module docstring.

    reference: image for PSNR/SSIM (default: the scan's ground truth; none: NaN).
    callback: called with the DesignRun after every step (an exception stops the run; the
      checkpoint of the last completed step stays valid for resume).
    """
    num_views = scan.geometry.num_views
    config.check(num_views, scan.source)
    strategy = config.designer.acquisition
    reference = scan.ground_truth if reference is None else np.asarray(reference, np.float32)
    log = Path(log) if log is not None else None
    fingerprint = scan_fingerprint(scan)
    designer = AngleDesigner(scan.geometry, config=config.designer)
    cfg = json.loads(config.to_json())
    run = None
    if resume and log is not None and log.exists():
        with h5py.File(log, "r") as f:
            if f"runs/{strategy}" in f:
                g = f[f"runs/{strategy}"]
                if g.attrs["scan"] != fingerprint:
                    raise InputError(f"{log}: the log was written for another scan.")
                if json.loads(g.attrs["config"]) != cfg:
                    raise InputError(f"{log}: the log's {strategy} run has other settings; "
                                     "resume with the same settings or write a new log.")
                state = _read_state(g["state"])
                run = _read_run(f, strategy)
        if run is not None:
            designer.restore(state)
            designer.replay(run.views, scan.sinogram)

    def record(new, t0, before):
        image = designer.reconstruction()
        seconds = before + time.perf_counter() - t0
        views = np.asarray(designer.order, np.int64)
        scores = designer.last_scores if designer.last_scores is not None else \
            np.full(num_views, np.nan)
        rows = dict(num_angles=len(views), psnr=np.nan, ssim=np.nan, seconds=seconds)
        if reference is not None:
            rows.update(psnr=psnr(image, reference), ssim=ssim(image, reference))
        if run is None:
            return DesignRun(strategy, designer.candidate_angles,
                             np.asarray([rows["num_angles"]]), [views], [np.asarray(new)],
                             np.asarray([rows["psnr"]]), np.asarray([rows["ssim"]]),
                             np.asarray([seconds]), image[None], np.asarray(scores)[None], cfg,
                             False)
        return dataclasses.replace(
            run, num_angles=np.append(run.num_angles, rows["num_angles"]),
            views=run.views + [views], new_views=run.new_views + [np.asarray(new)],
            psnr=np.append(run.psnr, rows["psnr"]), ssim=np.append(run.ssim, rows["ssim"]),
            seconds=np.append(run.seconds, seconds),
            reconstructions=np.concatenate([run.reconstructions, image[None]]),
            scores=np.concatenate([run.scores, np.asarray(scores)[None]]))

    def checkpoint():
        if log is not None:
            _write(log, run, designer.state(), fingerprint)
        if callback is not None:
            callback(run)

    if run is None:
        t0 = time.perf_counter()
        views = equidistant_views(num_views, config.initial)
        designer.observe_views(views, scan.sinogram[views])
        run = record(views, t0, 0.0)
        run.complete = config.acquire == 0
        checkpoint()
    total = config.initial + config.acquire
    while len(designer.order) < total:
        t0 = time.perf_counter()
        k = min(config.per_step, total - len(designer.order))
        if strategy == "equidistant":
            views = equidistant_views(num_views, len(designer.order) + k)
            new = np.setdiff1d(views, designer.order)
            designer.replace_views(views, scan.sinogram[views])
        else:
            new = designer.propose_views(k)
            designer.observe_views(new, scan.sinogram[new])
        run = record(new, t0, float(run.seconds[-1]))
        run.complete = len(designer.order) >= total
        if progress:
            print(f"{strategy}: {len(designer.order)} angles, PSNR {run.psnr[-1]:.2f} dB, "
                  f"{run.seconds[-1]:.1f} s", flush=True)
        checkpoint()
    return run
