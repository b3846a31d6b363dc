"""Worked examples beyond the paper: distil your own model on your own data (README, "Distil your own model").

A teacher fine-tuned from torchvision's ImageNet weights with a new classifier, then a small student distilled
from it with KD; both on an ImageFolder at 224 px.
"""

from __future__ import annotations

from typing import Any

DATA = {"name": "imagefolder", "root": "./data/my_images", "image_size": 224}
RECIPE = {"epochs": 30, "batch_size": 64, "lr": 0.01, "schedule": "cosine", "weight_decay": 1e-4}


def configs() -> dict[str, dict[str, Any]]:
    """Relative path under configs/ -> config."""
    teacher = {
        "method": "ce",
        "student": {"arch": "torchvision.resnet50", "weights": "IMAGENET1K_V2", "reset_classifier": True},
        "data": DATA,
        # fine-tuning: a few epochs of the new classifier alone, then the backbone at a tenth of the rate
        "train": {**RECIPE, "freeze_backbone_epochs": 2, "backbone_lr_scale": 0.1},
        "output_dir": "runs/examples/own_data/teacher",
    }
    student = {
        "method": "kd",
        "teacher": {"arch": "torchvision.resnet50", "checkpoint": "runs/examples/own_data/teacher/best.pt"},
        "student": {"arch": "torchvision.mobilenet_v3_small", "weights": "IMAGENET1K_V1", "reset_classifier": True},
        "data": DATA,
        "train": RECIPE,
        "kd": {"temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9},
        "output_dir": "runs/examples/own_data/student-kd",
    }
    return {"examples/own_data/teacher.yaml": teacher, "examples/own_data/student-kd.yaml": student}
