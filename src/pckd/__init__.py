"""pckd: knowledge distillation of image classifiers (PCKD, sample-wise CKD, intra-class teachers, baselines)."""

__version__ = "0.1.0"
