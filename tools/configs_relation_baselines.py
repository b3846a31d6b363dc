"""Configs of the relation/embedding baselines `rkd`, `pkt`, `cc` and `vid` for the 13 CIFAR-100 pairs.

RepDistiller (``scripts/run_cifar_distill.sh``) runs every pair with the same flags: CE weight 1 (-r 1), no KD
(-a 0) and one method weight (-b): RKD 1 (with its internal w_D 25 / w_A 50), PKT 30000, CC 0.02, VID 1. The
schedule is the common one of ``cifar100/base.yaml`` (240 epochs, batch 64, lr 0.05 or 0.01 for MobileNetV2 and
ShuffleNet students, x0.1 at 150/180/210, wd 5e-4), so no ``train`` override is needed.
"""

from __future__ import annotations

from typing import Any

from make_configs import PAIRS, pair_name, student_config

# method -> its config section; written out in full so every file shows the weights it trains with.
SECTIONS: dict[str, dict[str, Any]] = {
    "rkd": {"ce_weight": 1.0, "kd_weight": 0.0, "rkd_weight": 1.0, "distance_weight": 25.0, "angle_weight": 50.0},
    "pkt": {"ce_weight": 1.0, "kd_weight": 0.0, "pkt_weight": 30000.0},
    "cc": {"ce_weight": 1.0, "kd_weight": 0.0, "cc_weight": 0.02, "feat_dim": 128, "kernel": "repdistiller"},
    "vid": {"ce_weight": 1.0, "kd_weight": 0.0, "vid_weight": 1.0, "init_pred_var": 5.0},
}


def configs() -> dict[str, dict[str, Any]]:
    """Relative path under configs/ -> config: ``cifar100/<method>/<teacher>-<student>.yaml`` for every pair."""
    out: dict[str, dict[str, Any]] = {}
    for method, section in SECTIONS.items():
        for teacher, student in PAIRS:
            name = pair_name(teacher, student)
            out[f"cifar100/{method}/{name}.yaml"] = student_config(
                method, teacher, student, dict(section), f"{method}/{name}")
    return out
