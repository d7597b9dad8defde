"""Score-based variational inference: proximal score matching, variational families,
targets, baselines and comparisons. A general library, free of CT (the DIP posterior built on
it is `ctbayes.posteriors.score_vi`)."""
