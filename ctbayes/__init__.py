"""ctbayes: CT reconstruction with per-pixel uncertainty and adaptive angle selection."""

__version__ = "0.1.0"
