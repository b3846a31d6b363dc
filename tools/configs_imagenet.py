"""The ImageNet base config (ResNet34 -> ResNet18, the pair of the PCKD paper's Table III); the methods' configs
on top of it come from configs_imagenet_baselines.py, configs_pckd.py and configs_ckd.py.

The teacher is torchvision's pretrained ResNet34, whose weights file the user downloads once and names by path
(the project never downloads weights at run time).
"""

from __future__ import annotations

from typing import Any

# The published torchvision ResNet34 (73.31 / 91.42), fetched once into torchvision's cache by teacher.weights.
TEACHER_WEIGHTS = "IMAGENET1K_V1"


def imagenet_base() -> dict[str, Any]:
    """Standard ImageNet recipe: 100 epochs, SGD lr 0.1 (batch 256), x0.1 at 30/60/90, wd 1e-4."""
    return {
        "data": {"name": "imagefolder", "root": "./data/imagenet", "image_size": 224, "num_workers": 8},
        "teacher": {"arch": "torchvision.resnet34", "weights": TEACHER_WEIGHTS},
        "student": {"arch": "torchvision.resnet18"},
        "train": {"epochs": 100, "batch_size": 256, "eval_batch_size": 256, "lr": 0.1, "momentum": 0.9,
                  "weight_decay": 1e-4, "schedule": "multistep", "milestones": [30, 60, 90], "lr_decay": 0.1,
                  "log_interval": 100},
    }


def configs() -> dict[str, dict[str, Any]]:
    return {"imagenet/base.yaml": imagenet_base()}
