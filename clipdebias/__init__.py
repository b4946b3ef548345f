"""clipdebias: adapt CLIP to unlabeled data with debiased pseudo-labels (DebiasPL, CVPR 2022)."""

__version__ = "0.1.0"
