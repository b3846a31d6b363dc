"""Config -> device, data, models, distiller, optimizer, schedule. Validates everything before training starts."""

from __future__ import annotations

import math
import os
import random
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

import pckd.distributed as dist
from pckd.config import method_params
from pckd.data import DataBundle, build_data
from pckd.engine.optim import StepRule, build_optimizer, plain_step
from pckd.errors import PckdWarning, UserError
from pckd.methods.base import Distiller, method_registry
from pckd.models import create_model, extract_state_dict, load_weights, read_checkpoint
from pckd.models.fold_bn import fold_batchnorm
from pckd.models.pretrained import classifier_keys, load_backbone, pretrained_state


def resolve_device(name: str) -> torch.device:
    """``auto`` -> this rank's CUDA device if there is one, else CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device={name} but CUDA is not available on this machine; use train.device=cpu or auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("train.device=mps but MPS is not available; use train.device=cpu or auto")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed python, numpy and torch (every device); optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def build_network(model_cfg: Any, role: str, num_classes: int, input_size: int) -> nn.Module:
    """Create ``role``'s architecture, load its published weights and/or checkpoint, and check it against the
    data (classes, input size). With ``reset_classifier`` only the backbone is loaded and the classifier is
    trained from scratch for the data's classes."""
    model = create_model(model_cfg.arch, num_classes, key=f"{role}.arch")
    expected = getattr(model, "input_size", None)
    if expected == 32 and input_size != 32:
        raise UserError(
            f"{role}.arch={model_cfg.arch} is a 32x32 CIFAR model but the data gives {input_size}x{input_size} images; "
            f"use a torchvision.* model for this data or data.image_size=32"
        )
    if isinstance(expected, int) and expected >= 160 and input_size <= expected // 4:
        warnings.warn(
            f"{role}.arch={model_cfg.arch} is designed for {expected}x{expected} inputs but gets {input_size}x"
            f"{input_size}: its stem downsamples so much that little is left to learn from; use a CIFAR zoo model "
            f"('pckd models') or data.image_size={expected} (images are resized)", PckdWarning, stacklevel=2)
    notes = []
    if model_cfg.weights:
        state, classes, source = pretrained_state(model_cfg.arch, model_cfg.weights, f"{role}.weights")
        notes.append(load_backbone(model, state, source, model_cfg.reset_classifier, classes, num_classes,
                                   f"{role}.weights", f"{role}.reset_classifier"))
    if model_cfg.checkpoint:
        if model_cfg.reset_classifier:
            state = extract_state_dict(read_checkpoint(model_cfg.checkpoint, trust=model_cfg.trust_checkpoint,
                                                       key_name=f"{role}.checkpoint"), source=model_cfg.checkpoint)
            head = classifier_keys(model)
            classes = int(state[head[0]].shape[0]) if head and head[0] in state else 0
            notes.append(load_backbone(model, state, f"'{model_cfg.checkpoint}'", True, classes, num_classes,
                                       f"{role}.checkpoint", f"{role}.reset_classifier"))
        else:
            load_weights(model, model_cfg.checkpoint, trust=model_cfg.trust_checkpoint, strict=model_cfg.strict,
                         key_name=f"{role}.checkpoint")
    if notes and dist.is_main_process():
        for note in notes:
            print(f"{role}: {note}", flush=True)
    return model


def prepare_teacher(teacher: nn.Module, train_cfg: Any, input_size: int, device: torch.device) -> nn.Module:
    """The frozen teacher as it runs during distillation: eval mode, BatchNorms folded into the convolutions
    (``train.teacher_fold_bn``) and channels_last layout (``train.teacher_channels_last``; unset: on for CPU,
    where it measured 1.5-1.9x faster for the teacher forward, else as ``train.channels_last``).

    Both change only how the same function is computed (outputs agree within 1e-4 relative, checked on a probe
    batch); the teacher is never trained, so the less precise channels_last BatchNorm backward does not apply.
    """
    teacher.eval().requires_grad_(False)
    if train_cfg.teacher_fold_bn:
        probe = torch.randn(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
        teacher, report = fold_batchnorm(teacher, probe)
        if report.folded and dist.is_main_process():
            print(f"teacher: folded {report.folded} BatchNorm layers into their convolutions ({report.remaining} "
                  f"left; outputs within {report.max_rel_diff:.1e} relative)", flush=True)
    channels_last = train_cfg.teacher_channels_last
    if channels_last is None:
        channels_last = device.type == "cpu" or train_cfg.channels_last
    if channels_last:
        teacher.to(memory_format=torch.channels_last)
    return teacher


@dataclass
class Built:
    """Everything the trainer needs, already on the device."""

    device: torch.device
    data: DataBundle
    distiller: Distiller
    optimizer: torch.optim.Optimizer
    schedule: EpochSchedule
    step: StepRule = plain_step  # how a step's losses become an update (pckd.engine.optim)


class EpochSchedule:
    """Sets the learning rate at the start of each epoch from :func:`lr_factor` (a pure function of the epoch,
    so a resumed or extended run gets exactly the rate the config asks for)."""

    def __init__(self, optimizer: torch.optim.Optimizer, train_cfg: Any,
                 stage_lr: Callable[[int], float | None] | None = None) -> None:
        self.optimizer = optimizer
        self.train_cfg = train_cfg
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.stage_lr = stage_lr  # the method's own rate for some epochs (Distiller.stage_lr), or None
        self.epoch = 0

    def set_epoch(self, epoch: int) -> float:
        """Set every group's rate for ``epoch`` (a frozen backbone group gets 0); returns the base rate. In an
        epoch where the method's stage sets its own rate, every group gets that rate, and it is returned."""
        self.epoch = epoch
        own = self.stage_lr(epoch) if self.stage_lr is not None else None
        if own is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = own
            return own
        factor = lr_factor(epoch, self.train_cfg)
        frozen = epoch <= self.train_cfg.freeze_backbone_epochs
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = 0.0 if frozen and group.get("name") == BACKBONE_GROUP else base * factor
        return self.train_cfg.lr * factor

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "base_lrs": self.base_lrs, "schedule": str(self.train_cfg.schedule)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = state["epoch"]


def lr_factor(epoch: int, train_cfg: Any) -> float:
    """Learning-rate multiplier for ``epoch`` (counted from 1): optional linear warm-up, then step or cosine.

    Multistep follows RepDistiller: lr x decay^(number of milestones m with epoch > m). Cosine follows
    CosineAnnealingLR stepped once per epoch: 0.5 (1 + cos(pi (epoch-1) / epochs)).
    """
    if train_cfg.warmup_epochs and epoch <= train_cfg.warmup_epochs:
        return epoch / train_cfg.warmup_epochs
    if train_cfg.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / train_cfg.epochs))
    return train_cfg.lr_decay ** sum(epoch > m for m in train_cfg.milestones)


BACKBONE_GROUP = "student backbone"


def parameter_groups(distiller: Distiller, train_cfg: Any) -> list[dict[str, Any]]:
    """What the optimizer trains. One group, unless a fine-tuning recipe separates the student's backbone
    (``train.backbone_lr_scale`` of the rate; frozen for ``train.freeze_backbone_epochs``) from its classifier
    and the method's heads (at the full rate)."""
    trainable = [p for p in distiller.parameters() if p.requires_grad]
    if train_cfg.backbone_lr_scale == 1.0 and train_cfg.freeze_backbone_epochs == 0:
        return [{"params": trainable, "name": "all"}]
    head = {id(p) for p in distiller.student.get_submodule(classifier_keys(distiller.student)[0].rsplit(".", 1)[0])
            .parameters()}
    student = {id(p) for p in distiller.student.parameters()}
    backbone = [p for p in trainable if id(p) in student and id(p) not in head]
    rest = [p for p in trainable if id(p) not in student or id(p) in head]
    return [{"params": backbone, "name": BACKBONE_GROUP, "lr": train_cfg.lr * train_cfg.backbone_lr_scale},
            {"params": rest, "name": "classifier and heads"}]


def check_first_stage(cfg: Any) -> None:
    """Refuse a two-stage method (AB/FT/FSP's init stage, SSKD's teacher stage: ``<method>.init_epochs``) whose
    first stage takes every epoch of the run: such a run would end without ever training the student."""
    init = getattr(method_params(cfg), "init_epochs", 0)
    if init and init >= cfg.train.epochs:
        raise UserError(
            f"config key '{cfg.method}.init_epochs'={init} is not below train.epochs={cfg.train.epochs}: the first "
            f"stage would take the whole run and the student would never train; set train.epochs to "
            f"{cfg.method}.init_epochs + the student's epochs (e.g. {init + 240}) or lower {cfg.method}.init_epochs")


def build(cfg: Any) -> Built:
    """Build the whole training setup from a resolved config (raises UserError on any bad input)."""
    device = resolve_device(cfg.train.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif cfg.train.precision == "fp16":
        raise UserError(f"train.precision=fp16 needs a CUDA device (float16 autocast with a gradient scaler), but the "
                        f"run is on {device.type}; use train.precision=bf16 there")
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    if cfg.train.batch_size % dist.world_size():
        raise UserError(
            f"train.batch_size={cfg.train.batch_size} is not divisible by the {dist.world_size()} processes; "
            f"use a multiple of {dist.world_size()}"
        )
    check_first_stage(cfg)
    spec = method_registry()[cfg.method]
    data = build_data(cfg.data, cfg.train.batch_size, cfg.train.eval_batch_size, cfg.train.seed, device,
                      strong_view=spec.cls.strong_view)
    student = build_network(cfg.student, "student", data.num_classes, data.input_size)
    teacher = None
    if spec.cls.uses_teacher(method_params(cfg)):
        if not cfg.teacher.checkpoint and not cfg.teacher.weights:
            raise UserError(
                f"method={cfg.method} needs a trained teacher: set teacher.checkpoint=PATH (or teacher.weights=NAME "
                f"for published torchvision/timm weights) "
                f"(train one with method=ce, e.g. 'pckd train configs/cifar100/teachers/{cfg.teacher.arch}.yaml')"
            )
        teacher = build_network(cfg.teacher, "teacher", data.num_classes, data.input_size)
        teacher = prepare_teacher(teacher, cfg.train, data.input_size, device)
    distiller = spec.cls(student, teacher, method_params(cfg), data.info).to(device)
    if cfg.train.channels_last:
        distiller.to(memory_format=torch.channels_last)
    setup = build_optimizer(parameter_groups(distiller, cfg.train), cfg.train)
    schedule = EpochSchedule(setup.optimizer, cfg.train, distiller.stage_lr)
    return Built(device, data, distiller, setup.optimizer, schedule, setup.step)
