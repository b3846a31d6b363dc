"""Factor transfer (`ft`; Kim et al., NeurIPS 2018, "Paraphrasing Complex Network: Network Compression via
Factor Transfer"), two-stage as in RepDistiller.

Equations, defaults with their sources and deviations: docs/methods/ft.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pckd.data.batch import Batch
from pckd.data.info import DataInfo
from pckd.errors import UserError
from pckd.methods.ab import in_init_stage
from pckd.methods.base import StepOutput, TeacherDistiller, register_method
from pckd.methods.precision import as_float, no_autocast
from pckd.methods.stage_features import match_spatial
from pckd.models.interface import feature_shapes
from pckd.params import Settings, hp

LEAKY_SLOPE = 0.1  # negative slope of every LeakyReLU in the paraphraser and translator (RepDistiller)


# ---- pure loss functions ---------------------------------------------------------------------------------
def ft_factor(f: Tensor, p: float = 2.0) -> Tensor:
    """``normalize_L2(mean_c |f|^p)`` of a [B, C, H, W] factor, flattened to [B, H*W]; at least float32."""
    return F.normalize(as_float(f).abs().pow(p).mean(dim=1).flatten(1), dim=1)


def factor_transfer_loss(factor_s: Tensor, factor_t: Tensor, factor_p: float = 2.0, loss_p: float = 1.0) -> Tensor:
    """``mean_{b,hw} |phi(factor_s) - phi(factor_t)|^loss_p`` after pooling the larger map to the smaller size."""
    with no_autocast(factor_s):
        factor_s, factor_t = match_spatial(as_float(factor_s), as_float(factor_t))
        diff = ft_factor(factor_s, factor_p) - ft_factor(factor_t, factor_p)
        return diff.abs().pow(loss_p).mean()


def reconstruction_loss(reconstruction: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over all elements (the paraphraser's autoencoder loss, ``nn.MSELoss``); float32+."""
    return (as_float(reconstruction) - as_float(target)).pow(2).mean()


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Run ``module`` in eval mode inside the block (BatchNorm uses and keeps its running statistics), then
    restore its previous mode."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


# ---- heads ----------------------------------------------------------------------------------------------
def factor_channels(teacher_channels: int, rate: float) -> int:
    """Channels of the factor, ``int(C_t * rate)`` as RepDistiller; must be at least 1."""
    channels = int(teacher_channels * rate)
    if channels < 1:
        raise UserError(f"ft.rate={rate} gives int({teacher_channels} * {rate}) = 0 factor channels; raise ft.rate")
    return channels


def _conv_block(c_in: int, c_out: int, batch_norm: bool, transposed: bool = False) -> list[nn.Module]:
    conv = (nn.ConvTranspose2d if transposed else nn.Conv2d)(c_in, c_out, kernel_size=3, stride=1, padding=1)
    norm = [nn.BatchNorm2d(c_out)] if batch_norm else []
    return [conv, *norm, nn.LeakyReLU(LEAKY_SLOPE)]


class Paraphraser(nn.Module):
    """Teacher-side autoencoder: ``encode`` gives the factor, ``forward`` the reconstruction (no BatchNorm)."""

    def __init__(self, teacher_channels: int, rate: float) -> None:
        super().__init__()
        c, k = teacher_channels, factor_channels(teacher_channels, rate)
        self.encoder = nn.Sequential(*_conv_block(c, c, False), *_conv_block(c, k, False), *_conv_block(k, k, False))
        self.decoder = nn.Sequential(*_conv_block(k, k, False, True), *_conv_block(k, c, False, True),
                                     *_conv_block(c, c, False, True))

    def encode(self, f_t: Tensor) -> Tensor:
        return self.encoder(f_t)

    def forward(self, f_t: Tensor) -> Tensor:
        return self.decoder(self.encoder(f_t))


class Translator(nn.Module):
    """Student-side encoder to the teacher's factor channels (conv -> BatchNorm -> LeakyReLU, three times)."""

    def __init__(self, student_channels: int, teacher_channels: int, rate: float) -> None:
        super().__init__()
        c, k = student_channels, factor_channels(teacher_channels, rate)
        self.encoder = nn.Sequential(*_conv_block(c, c, True), *_conv_block(c, k, True), *_conv_block(k, k, True))

    def forward(self, f_s: Tensor) -> Tensor:
        return self.encoder(f_s)


# ---- method ---------------------------------------------------------------------------------------------
@dataclass
class FTParams(Settings):
    """Hyper-parameters of `ft` (section ``ft.*``); defaults are RepDistiller's CIFAR-100 settings."""

    ce_weight: float = hp(1.0, ge=0, doc="main stage: weight of the cross-entropy (RepDistiller -r 1)")
    ft_weight: float = hp(200.0, ge=0, doc="main stage: weight of L_FT (RepDistiller -b 200)")
    rate: float = hp(0.5, gt=0, doc="paraphrase rate k: factor channels = int(k * C_t) (Paraphraser/Translator k=0.5)")
    factor_p: float = hp(2.0, gt=0, doc="p1: factor = normalize(mean_c |F|^p1) (FactorTransfer p1=2)")
    loss_p: float = hp(1.0, gt=0, doc="p2: L_FT = mean |phi_s - phi_t|^p2 (FactorTransfer p2=1)")
    init_epochs: int = hp(30, ge=0, doc="epochs 1..init_epochs train only the paraphraser (RepDistiller --init_epochs 30)")


@register_method("ft", FTParams, "factor transfer: init stage trains the teacher's paraphraser, then CE + beta * L1 "
                                 "between factors")
class FT(TeacherDistiller):
    """Init stage: paraphraser autoencoder on the teacher's last map; main stage: CE + ``ft_weight * L_FT``."""

    params: FTParams
    has_unused_parameters = True  # the paraphraser trains in the init stage, the translator after it

    def __init__(self, student: nn.Module, teacher: nn.Module, params: FTParams, data: DataInfo) -> None:
        super().__init__(student, teacher, params, data)
        s_last, t_last = feature_shapes(student).stages[-1], feature_shapes(teacher).stages[-1]
        if len(s_last) != 3 or len(t_last) != 3:
            raise UserError(f"ft needs (C, H, W) last stage maps, got student {s_last} and teacher {t_last}")
        self.paraphraser = Paraphraser(t_last[0], params.rate)
        self.translator = Translator(s_last[0], t_last[0], params.rate)

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        p = self.params
        x = batch.augment.standard(batch.images)
        f_t = self.teacher_features(x).stages[-1]  # teacher first: lower peak memory
        if in_init_stage(epoch, p.init_epochs):
            # the student only reports logits: untouched, as in RepDistiller's init()
            with torch.no_grad(), eval_mode(self.student):
                logits = self.student(x)
            loss = reconstruction_loss(self.paraphraser(f_t), f_t)
            return StepOutput(logits=logits, losses={"ft_init": loss})
        s = self.student_features(x)
        with torch.no_grad():  # the paraphraser is frozen after the init stage
            factor_t = self.paraphraser.encode(f_t)
        factor_s = self.translator(s.stages[-1])
        losses = {
            "ce": p.ce_weight * self.cross_entropy(s.logits, batch.labels),
            "ft": p.ft_weight * factor_transfer_loss(factor_s, factor_t, p.factor_p, p.loss_p),
        }
        return StepOutput(logits=s.logits, losses=losses)
