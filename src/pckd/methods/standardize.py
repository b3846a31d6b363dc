"""Logit standardisation (Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024): the one
per-sample z-score shared by `ls` and by the ``logit_standardize`` switch of `kd`, `dkd`, `ckd` and `mld`.

    Z(z) = (z - mean(z)) / (std(z) + 1e-7)     mean and std over the K classes of one row,
                                               std unbiased (divides by K - 1), as torch.std by default

as the authors' released ``normalize`` (``mdistiller/distillers/KD.py`` and ``DKD.py`` of
sunshangquan/logit-standardization-KD) computes it.
"""

from __future__ import annotations

import torch
from torch import Tensor

STD_EPS = 1e-7  # added to the std, as in the released code (keeps a constant row finite)


def standardize(logits: Tensor) -> Tensor:
    """Per-row z-score ``(z - mean) / (std + 1e-7)`` with the unbiased std; float32 at least (float64 kept)."""
    z = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return (z - z.mean(dim=1, keepdim=True)) / (z.std(dim=1, keepdim=True) + STD_EPS)


def standardize_pair(student_logits: Tensor, teacher_logits: Tensor, on: bool) -> tuple[Tensor, Tensor]:
    """Both logit tensors z-scored when ``on`` (a method's ``logit_standardize`` switch), else unchanged."""
    if not on:
        return student_logits, teacher_logits
    return standardize(student_logits), standardize(teacher_logits)
