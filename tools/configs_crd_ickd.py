"""Configs of the contrastive/correlation baselines `crd` and `ickd` for the 13 CIFAR-100 pairs of the PCKD paper.

Both recipes use one set of hyper-parameters for every pair and the common CIFAR schedule of
``cifar100/base.yaml`` (240 epochs, batch 64, lr x0.1 after 150/180/210; lr 0.01 for MobileNetV2/ShuffleNet
students), as RepDistiller and the ICKD code do:

* ``crd``: RepDistiller's "CRD" row, ``-r 1 -a 0 -b 0.8``, feat_dim 128, nce_k 16384, nce_t 0.07, nce_m 0.5,
  negatives from other classes (its CIFAR data loader);
* ``ickd``: the ICKD code's "ICKD-C" recipe (README, CIFAR-100), ``-r 1 -a 1 -b 2.5`` with KD at T = 4. Its
  README reports the 7 same-family pairs; the 6 cross-family pairs use the same recipe.
"""

from __future__ import annotations

from typing import Any

from make_configs import PAIRS, pair_name, student_config

CRD_SECTION: dict[str, Any] = {
    "ce_weight": 1.0, "kd_weight": 0.0, "crd_weight": 0.8, "temperature": 4.0,
    "feat_dim": 128, "nce_k": 16384, "nce_t": 0.07, "nce_mom": 0.5, "negatives": "other_class",
}
ICKD_SECTION: dict[str, Any] = {"ce_weight": 1.0, "kd_weight": 1.0, "ickd_weight": 2.5, "temperature": 4.0}

SECTIONS: dict[str, dict[str, Any]] = {"crd": CRD_SECTION, "ickd": ICKD_SECTION}


def configs() -> dict[str, dict[str, Any]]:
    """Relative path under configs/ -> config, for tools/make_configs.py."""
    out: dict[str, dict[str, Any]] = {}
    for method, section in SECTIONS.items():
        for teacher, student in PAIRS:
            name = pair_name(teacher, student)
            out[f"cifar100/{method}/{name}.yaml"] = student_config(
                method, teacher, student, dict(section), f"{method}/{name}")
    return out
