"""PCKD: Preview-based Category Contrastive Knowledge Distillation (Ding et al., TCSVT 2025).

    L = ce * CE(unrotated) + kd * (1/B) sum_i w_i KD_i + ccc * (1/4B) sum_{i,j} w_i l_ij
        + fa * (2 - 2 mean cos(MLP(f_s), f_t)) + ca * MSE([W_s|b_s], [W_t|b_t])

with w_i the preview weight of sample i (:mod:`pckd.methods.weighting`). Equations, the places where the
released code and the paper differ, and every default's origin: docs/methods/pckd.md.
"""

from pckd.methods.pckd.distiller import PCKD
from pckd.methods.pckd.losses import (
    category_center_contrast,
    category_center_contrast_centers,
    category_profiles,
    center_alignment,
    feature_alignment,
    kd_per_sample,
)
from pckd.methods.pckd.params import CCCForm, PCKDParams, PreviewMode, PreviewParams
from pckd.methods.weighting import (
    SampleWeighting,
    curriculum_weights,
    difficulty,
    focal_weights,
    preview_threshold,
    preview_weights,
    uniform_weights,
    weighted_mean,
)

PreviewWeighting = SampleWeighting  # PCKD's name for the shared reducer

__all__ = [
    "PCKD",
    "CCCForm",
    "PCKDParams",
    "PreviewMode",
    "PreviewParams",
    "PreviewWeighting",
    "SampleWeighting",
    "category_center_contrast",
    "category_center_contrast_centers",
    "category_profiles",
    "center_alignment",
    "curriculum_weights",
    "difficulty",
    "feature_alignment",
    "focal_weights",
    "kd_per_sample",
    "preview_threshold",
    "preview_weights",
    "uniform_weights",
    "weighted_mean",
]
