"""Configs of the intermediate-feature baselines `fitnet`, `at`, `sp` and `nst` on the 13 CIFAR-100 pairs.

Hyper-parameters follow RepDistiller's CIFAR-100 recipe (``scripts/run_cifar_distill.sh``; the CRD paper's
baselines): CE weight 1 (``-r 1``), no KD term (``-a 0``) and the method weight ``-b`` below, identical for every
pair; the schedule is the common one of ``cifar100/base.yaml`` (240 epochs, lr x0.1 at 150/180/210, lr 0.05 or
0.01 for MobileNetV2/ShuffleNet students), which is RepDistiller's too.

Every pair works for every method with the project's zoo shapes: AT and NST pool the larger map to the smaller
size where spatial sizes differ (the 6 cross-architecture pairs), as RepDistiller does, and all 13 pairs expose
equally many stages; FitNet's stage-2 maps are equal in size or the student's is half the teacher's (transposed
conv regressor) for every pair. So no pair is left out.
"""

from __future__ import annotations

from typing import Any

from make_configs import PAIRS, pair_name, student_config

# method -> its config section (RepDistiller -r / -b and the loss's own settings).
SECTIONS: dict[str, dict[str, Any]] = {
    "fitnet": {"ce_weight": 1.0, "hint_weight": 100.0, "hint_layer": 2},
    "at": {"ce_weight": 1.0, "at_weight": 1000.0, "p": 2.0},
    "sp": {"ce_weight": 1.0, "sp_weight": 3000.0},
    "nst": {"ce_weight": 1.0, "nst_weight": 50.0, "degree": 2, "c": 0.0},
}


def configs() -> dict[str, dict[str, Any]]:
    """``cifar100/<method>/<teacher>-<student>.yaml`` for the four methods and all 13 pairs."""
    out: dict[str, dict[str, Any]] = {}
    for method, section in SECTIONS.items():
        for teacher, student in PAIRS:
            name = pair_name(teacher, student)
            out[f"cifar100/{method}/{name}.yaml"] = student_config(
                method, teacher, student, dict(section), f"{method}/{name}"
            )
    return out
