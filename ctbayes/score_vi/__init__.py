"""Score-based variational inference: proximal score matching, baselines, DIP posterior."""
