"""ImageNet configs of the Table III baselines (ResNet34 -> ResNet18): KD, AT, CRD, ReviewKD and DKD, each with
the recipe of mdistiller's ``configs/imagenet/r34_r18/<method>.yaml`` (the release the PCKD paper's Table III
baselines come from), on top of ``imagenet/base.yaml`` (data, teacher, student, the 100-epoch step schedule).

Per method, from those files: SOLVER.BATCH_SIZE and LR (512 / 0.2 for KD, AT, DKD; 256 / 0.1 for CRD, ReviewKD),
EPOCHS 100, LR_DECAY_STAGES 30/60/90 x0.1, WEIGHT_DECAY 1e-4, MOMENTUM 0.9, and the method's loss section; where
a file sets nothing, mdistiller's ``engine/cfg.py`` default. docs/imagenet.md lists every value and deviation.
"""

from __future__ import annotations

from typing import Any

PAIR = "resnet34-resnet18"
LARGE_BATCH = {"batch_size": 512, "lr": 0.2}  # kd.yaml, at.yaml, dkd.yaml
SMALL_BATCH = {"batch_size": 256, "lr": 0.1}  # crd.yaml, reviewkd.yaml

SECTIONS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # KD.TEMPERATURE 1, KD.LOSS.CE_WEIGHT 0.5, KD_WEIGHT 0.5
    "kd": (LARGE_BATCH, {"temperature": 1.0, "ce_weight": 0.5, "kd_weight": 0.5}),
    # cfg.py defaults: AT.P 2, AT.LOSS.CE_WEIGHT 1.0, FEAT_WEIGHT 1000
    "at": (LARGE_BATCH, {"ce_weight": 1.0, "at_weight": 1000.0, "p": 2.0}),
    # CRD: cfg.py CRD.LOSS 1.0 / 0.8, FEAT.DIM 128, NCE K 16384 / T 0.07 / momentum 0.5; negatives as
    # mdistiller's ImageNetInstanceSample draws them (other classes, with replacement)
    "crd": (SMALL_BATCH, {"ce_weight": 1.0, "kd_weight": 0.0, "crd_weight": 0.8, "feat_dim": 128, "nce_k": 16384,
                          "nce_t": 0.07, "nce_mom": 0.5, "negatives": "other_class_replace"}),
    # REVIEWKD.CE_WEIGHT 1.0, REVIEWKD_WEIGHT 1.0, WARMUP_EPOCHS 1
    "reviewkd": (SMALL_BATCH, {"ce_weight": 1.0, "reviewkd_weight": 1.0, "warmup_epochs": 1.0}),
    # DKD.CE_WEIGHT 1.0, ALPHA 1.0 (cfg.py default), BETA 0.5, T 1.0, WARMUP 1
    "dkd": (LARGE_BATCH, {"ce_weight": 1.0, "alpha": 1.0, "beta": 0.5, "temperature": 1.0, "warmup": 1}),
}


def configs() -> dict[str, dict[str, Any]]:
    """Relative path under configs/ -> config, for tools/make_configs.py."""
    return {f"imagenet/{method}/{PAIR}.yaml": {
        "_base_": "imagenet/base.yaml", "method": method, "train": dict(train), method: dict(section),
        "output_dir": f"runs/imagenet/{method}/{PAIR}"} for method, (train, section) in SECTIONS.items()}
