"""Factor transfer (`ft`; Kim et al., NeurIPS 2018, "Paraphrasing Complex Network: Network Compression via
Factor Transfer"), two-stage as in RepDistiller.

A teacher-side *paraphraser* (a convolutional autoencoder) compresses the teacher's last stage map into a
"factor" with ``k * C_t`` channels; a student-side *translator* maps the student's last stage map to a factor
of the same size, and the student learns to match the teacher's factor. As implemented (RepDistiller's
``models/util.py:Paraphraser/Translator``, ``distiller_zoo/FT.py``, ``helper/pretrain.py``, ``train_student.py``):

* maps: ``f_t = teacher.stages[-1]``, ``f_s = student.stages[-1]`` (RepDistiller's ``feat[-2]``);
* paraphraser (no BatchNorm, RepDistiller's ``use_bn=False``): encoder = three 3x3 convs (padding 1)
  ``C_t -> C_t -> k C_t -> k C_t``, decoder = three 3x3 transposed convs ``k C_t -> k C_t -> C_t -> C_t``, each
  followed by LeakyReLU(0.1); ``k = rate = 0.5`` (``int(C_t * k)`` channels);
* translator: three 3x3 convs ``C_s -> C_s -> k C_t -> k C_t``, each followed by BatchNorm and LeakyReLU(0.1);
* factor of a map ``F`` [B, C, H, W]: ``phi(F) = normalize_L2(mean_c |F_c|^p1)`` flattened to [B, H*W]
  (p1 = ``factor_p`` = 2; RepDistiller's ``F.normalize(f.pow(p1).mean(1).view(B, -1))``; ``|.|`` makes a
  non-even p1 well defined and changes nothing for p1 = 2);
* ``L_FT = mean_{b,hw} |phi(T(f_s)) - phi(P_enc(f_t))|^p2`` with p2 = ``loss_p`` = 1 (RepDistiller
  ``FactorTransfer(p1=2, p2=1)``); where the two factors' spatial sizes differ, the larger is adaptive-average-
  pooled to the smaller first (RepDistiller).

Note: the paper's factor is the whole vectorised factor ``F / ||F||_2``; RepDistiller (followed here) first
averages the squared factor over channels, an attention-map-like reduction, before L2-normalising.

Two stages, modelled inside the method because this project has one training loop and one optimizer:

* epochs ``1..init_epochs`` (default 30): only the paraphraser trains, as an autoencoder of the frozen teacher's
  map: ``ft_init = mean (P_dec(P_enc(f_t)) - f_t)^2`` (``nn.MSELoss``, weight 1, no CE). The student is run
  only to report training logits, under ``no_grad`` and in eval mode, so it is left exactly as it was (no
  weight change, no BatchNorm statistics update), as in RepDistiller's ``init()``;
* epochs ``init_epochs+1..``: ``ce_weight * CE + ft_weight * L_FT`` with RepDistiller's ``-r 1 -a 0 -b 200``; the
  paraphraser is frozen (its factor is computed under ``no_grad``) and the translator trains with the student.

The configs extend the schedule by the init stage (``train.epochs: 270``, milestones 180/210/240), so the main
stage sees RepDistiller's 240 epochs with decays at its epochs 150/180/210. During the init stage the lr is the
schedule's constant base lr (0.05, 0.01 for MobileNetV2/ShuffleNet students), SGD momentum 0.9, weight decay 5e-4.
Deviation: RepDistiller's ``init()`` trains FT's paraphraser with lr 0.01 when the student is a ResNet or WRN
(``opt.distill == 'factor'`` special case) and with ``opt.learning_rate`` otherwise; a single optimizer cannot give
the paraphraser alone another lr, so here it uses the schedule's lr (0.05 for ResNet/WRN students).

Parameters outside a stage's loss (the whole student and the translator during init; the paraphraser after it)
get no gradient: the trainer zeroes gradients with ``set_to_none=True`` and ``torch.optim.SGD`` skips a parameter
whose gradient is None, so neither weight decay nor momentum moves it in that stage (under DDP with
``find_unused_parameters=True`` the gradients of globally unused parameters also stay None). The init stage's
epochs are counted in the run's epoch numbers.

Any student/teacher pair works (only the last stage maps are used; channels are adapted by the heads). Under
DDP each rank's loss is a shard mean (no cross-sample terms); the translator's BatchNorms follow `train.sync_bn`.
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
        s = self.student.forward_features(x)
        with torch.no_grad():  # the paraphraser is frozen after the init stage
            factor_t = self.paraphraser.encode(f_t)
        factor_s = self.translator(s.stages[-1])
        losses = {
            "ce": p.ce_weight * self.cross_entropy(s.logits, batch.labels),
            "ft": p.ft_weight * factor_transfer_loss(factor_s, factor_t, p.factor_p, p.loss_p),
        }
        return StepOutput(logits=s.logits, losses=losses)
