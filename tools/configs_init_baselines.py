"""Configs of the two-stage baselines `ab`, `ft` and `fsp` (RepDistiller's ``--init_epochs 30`` methods) on the
13 CIFAR-100 pairs.

RepDistiller first trains for 30 "init" epochs on the method's loss alone (``helper/pretrain.py:init``), then runs
its usual 240 epochs with CE weight 1 (``-r 1``), no KD term (``-a 0``) and beta ``-b``. Here the init stage lives
inside each method (``<method>.init_epochs``), so the schedule is extended by 30 epochs: ``train.epochs: 270``
with the lr decays moved to 180/210/240 (RepDistiller's 150/180/210 of the main stage). The base lr is the usual
0.05 (0.01 for MobileNetV2/ShuffleNet students), which the init stage uses as RepDistiller's does (except FT's
paraphraser under ResNet/WRN students, see ``pckd.methods.ft``).

Main-stage weights (RepDistiller's ``helper/loops.py``): AB and FSP set ``loss_kd = 0`` in the main stage, so their
``-b`` (1 and 50 in ``scripts/run_cifar_distill.sh``) multiplies nothing: ``ab_weight = fsp_weight = 0``; FT uses
``-b 200``. All settings are the same for every pair.

FSP compares FSP matrices entry by entry, so it needs the student's channel count to equal the teacher's at every
stage (stem included); ``pckd.methods.fsp`` rejects other pairs. Of the 13 pairs only the 6 listed in
``FSP_PAIRS`` qualify: wrn_40_2 -> wrn_40_1 (half the channels) and the 6 cross-architecture pairs are left out,
as the CRD paper's "NA" entries.
"""

from __future__ import annotations

from typing import Any

from make_configs import PAIRS, pair_name, student_config

INIT_EPOCHS = 30
TRAIN: dict[str, Any] = {"epochs": 240 + INIT_EPOCHS, "milestones": [150 + INIT_EPOCHS, 180 + INIT_EPOCHS,
                                                                      210 + INIT_EPOCHS]}

# method -> its config section (RepDistiller -r / main-stage beta and the loss's own settings).
SECTIONS: dict[str, dict[str, Any]] = {
    "ab": {"ce_weight": 1.0, "ab_weight": 0.0, "margin": 1.0, "init_epochs": INIT_EPOCHS},
    "ft": {"ce_weight": 1.0, "ft_weight": 200.0, "rate": 0.5, "factor_p": 2.0, "loss_p": 1.0,
           "init_epochs": INIT_EPOCHS},
    "fsp": {"ce_weight": 1.0, "fsp_weight": 0.0, "init_epochs": INIT_EPOCHS},
}

# The pairs with equal channel counts at every stage (checked against the models in tests/methods/test_fsp.py).
FSP_PAIRS = [("wrn_40_2", "wrn_16_2"), ("resnet56", "resnet20"), ("resnet110", "resnet20"), ("resnet110", "resnet32"),
             ("resnet32x4", "resnet8x4"), ("vgg13", "vgg8")]


def configs() -> dict[str, dict[str, Any]]:
    """``cifar100/<method>/<teacher>-<student>.yaml`` for ab and ft on all 13 pairs and fsp on ``FSP_PAIRS``."""
    out: dict[str, dict[str, Any]] = {}
    for method, section in SECTIONS.items():
        for teacher, student in PAIRS:
            if method == "fsp" and (teacher, student) not in FSP_PAIRS:
                continue  # unsupported by FSP (channel counts differ), see module docstring
            name = pair_name(teacher, student)
            out[f"cifar100/{method}/{name}.yaml"] = student_config(
                method, teacher, student, dict(section), f"{method}/{name}", train=dict(TRAIN)
            )
    return out
