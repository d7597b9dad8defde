"""Adaptive angle selection: Bayesian experimental design of projection angles.

After Barbano et al., "Bayesian experimental design for computed tomography with the
linearised deep image prior" (2022). The posterior over the image predicts what each
candidate angle would measure; an acquisition function scores the candidates from those
predictive samples; the chosen angles are measured and the posterior is updated.

Modules, one concept each: `masked` (the measured views as a row mask of the candidate
operator: fixed shapes, so nothing recompiles as the design grows), `acquisition` (var,
eig, diag-eig scores; equidistant and random baselines), `batch` (greedy batches with
conditioning of the sample ensemble), `network` (the DIP fit, its warm-started refits and checkpoint arrays),
`designer` (the prospective
object: propose(k) / observe(angles, measurements)), `loop` (retrospective design on a dense
scan with checkpoints and a log file), `figures` and `command` (the `ctbayes design` CLI).
"""

from ctbayes.design.acquisition import ACQUISITIONS, BASELINES, STRATEGIES, equidistant_views
from ctbayes.design.designer import DESIGN_POSTERIORS, AngleDesigner, DesignerConfig
from ctbayes.design.loop import DesignRun, LoopConfig, read_log, run_design

__all__ = ["ACQUISITIONS", "AngleDesigner", "BASELINES", "DESIGN_POSTERIORS", "DesignRun",
           "DesignerConfig", "LoopConfig", "STRATEGIES", "equidistant_views", "read_log",
           "run_design"]
