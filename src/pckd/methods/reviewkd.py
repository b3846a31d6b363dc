"""ReviewKD (`reviewkd`; Chen et al., "Distilling Knowledge via Knowledge Review", CVPR 2021).

Equations, defaults with their sources and deviations: docs/methods/reviewkd.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pckd.data.batch import Batch
from pckd.data.info import DataInfo
from pckd.errors import UserError
from pckd.methods.base import StepOutput, TeacherDistiller, register_method
from pckd.models.interface import FeatureOutput, FeatureShapes, feature_shapes
from pckd.params import Settings, hp

# Pooled context sizes of the HCL, in the order their weights halve (both references).
HCL_POOL_SIZES: tuple[int, ...] = (4, 2, 1)


# ---- pure loss functions ---------------------------------------------------------------------------------
def hcl_level(student: Tensor, teacher: Tensor) -> Tensor:
    """HCL of one level, [B,C,H,W] each: weighted MSE over the full map and its 4/2/1 pooled versions with
    k < H, weights 1, 0.5, 0.25, ... normalised by their sum. Computed in at least float32."""
    if student.shape != teacher.shape:
        raise ValueError(f"hcl_level: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ")
    dtype = torch.promote_types(torch.promote_types(student.dtype, teacher.dtype), torch.float32)
    s, t = student.to(dtype), teacher.to(dtype)
    height = s.shape[2]
    loss = F.mse_loss(s, t)
    weight, total = 1.0, 1.0
    for k in HCL_POOL_SIZES:
        if k >= height:  # pooling to the map's own size (or larger) adds nothing: skipped, as the references do
            continue
        weight /= 2.0
        loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(s, k), F.adaptive_avg_pool2d(t, k))
        total += weight
    return loss / total


def hcl_loss(student_feats: list[Tensor], teacher_feats: list[Tensor]) -> Tensor:
    """Hierarchical context loss: the sum over levels of :func:`hcl_level`."""
    if len(student_feats) != len(teacher_feats):
        raise ValueError(f"hcl_loss: {len(student_feats)} student levels but {len(teacher_feats)} teacher levels")
    return torch.stack([hcl_level(s, t) for s, t in zip(student_feats, teacher_feats)]).sum()


def warmup_factor(epoch: int, warmup_epochs: float) -> float:
    """``min(epoch / warmup_epochs, 1)`` with epochs from 1 (mdistiller); 1 when there is no warm-up."""
    if warmup_epochs <= 0:
        return 1.0
    return min(epoch / warmup_epochs, 1.0)


# ---- level layout ----------------------------------------------------------------------------------------
class Level(NamedTuple):
    """One review level: student channels and size, teacher channels and size (sizes as (H, W))."""

    in_channels: int
    in_size: tuple[int, int]
    out_channels: int
    out_size: tuple[int, int]


def _level_shapes(shapes: FeatureShapes) -> list[tuple[int, int, int]]:
    """(C, H, W) of ``stages[1:]`` and of the pooled vector as a 1x1 map."""
    levels = [(int(c), int(h), int(w)) for c, h, w in shapes.stages[1:]]
    return [*levels, (shapes.pooled, 1, 1)]


def review_levels(student: FeatureShapes, teacher: FeatureShapes) -> list[Level]:
    """The review levels of a pair, shallow to deep, checked: same number of levels, square maps, and each
    student map no larger than the teacher's (it is upsampled to the teacher's size, never shrunk)."""
    s_levels, t_levels = _level_shapes(student), _level_shapes(teacher)
    if len(s_levels) != len(t_levels):
        raise UserError(f"reviewkd: the student has {len(s_levels)} levels {s_levels} (stages[1:] + pooled) but the "
                        f"teacher has {len(t_levels)} {t_levels}; use a pair with the same number of stages")
    levels = []
    for i, (s, t) in enumerate(zip(s_levels, t_levels)):
        if len(s) != 3 or len(t) != 3 or s[1] != s[2] or t[1] != t[2] or s[1] > t[1]:
            raise UserError(f"reviewkd: level {i} has student feature {s} and teacher feature {t} (C, H, W); the "
                            "maps must be square and the student's no larger than the teacher's")
        levels.append(Level(s[0], (s[1], s[2]), t[0], (t[1], t[2])))
    return levels


# ---- the fusion module -----------------------------------------------------------------------------------
class ABF(nn.Module):
    """Attention-based fusion of one level: 1x1 conv + BN to ``mid_channels``, fusion with the deeper level's
    residual through a 2-channel sigmoid attention (unless ``fuse`` is False: the deepest level), resize to the
    teacher's size, 3x3 conv + BN to the teacher's channels."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        # Built in this order on purpose: the default initialisers draw from the RNG in creation order.
        reduce_conv = nn.Conv2d(in_channels, mid_channels, 1, bias=False)
        self.reduce = nn.Sequential(reduce_conv, nn.BatchNorm2d(mid_channels))
        self.attention = (nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None)
        output_conv = nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False)
        self.output = nn.Sequential(output_conv, nn.BatchNorm2d(out_channels))
        nn.init.kaiming_uniform_(reduce_conv.weight, a=1)
        nn.init.kaiming_uniform_(output_conv.weight, a=1)

    def forward(self, x: Tensor, residual: Tensor | None = None,
                out_size: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
        """Returns (output matched to the teacher [B, C_out, *out_size], residual for the next shallower level
        [B, mid, *out_size])."""
        h = self.reduce(x)
        if self.attention is not None:
            if residual is None:
                raise ValueError("ABF with fusion needs the deeper level's residual")
            residual = F.interpolate(residual, size=h.shape[-2:], mode="nearest")
            att = self.attention(torch.cat([h, residual], dim=1))
            h = h * att[:, 0:1] + residual * att[:, 1:2]
        if out_size is not None and tuple(h.shape[-2:]) != tuple(out_size):
            h = F.interpolate(h, size=out_size, mode="nearest")
        return self.output(h), h


class ReviewFusion(nn.Module):
    """The ABF stack of a pair; ``forward`` maps the student's levels (shallow to deep) to outputs of the
    teacher's shapes (shallow to deep), fusing from the deepest level down."""

    def __init__(self, levels: list[Level], mid_channels: int) -> None:
        super().__init__()
        self.out_sizes = [lv.out_size for lv in levels]
        last = len(levels) - 1
        # abfs[i] serves level i (shallow to deep); the deepest one has nothing deeper to fuse with.
        self.abfs = nn.ModuleList(ABF(lv.in_channels, mid_channels, lv.out_channels, fuse=i < last)
                                  for i, lv in enumerate(levels))

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        if len(feats) != len(self.abfs):
            raise ValueError(f"ReviewFusion expects {len(self.abfs)} levels, got {len(feats)}")
        deep_first: list[Tensor] = []
        residual: Tensor | None = None
        for i in reversed(range(len(feats))):
            out, residual = self.abfs[i](feats[i], residual, self.out_sizes[i])
            deep_first.append(out)
        return deep_first[::-1]


def level_features(out: FeatureOutput) -> list[Tensor]:
    """``stages[1:]`` and the pooled vector as a [B, d, 1, 1] map."""
    return list(out.stages[1:]) + [out.pooled[:, :, None, None]]


# ---- hyper-parameters and distiller ----------------------------------------------------------------------
@dataclass
class ReviewKDParams(Settings):
    """Hyper-parameters of `reviewkd` (config section ``reviewkd.*``; mdistiller's CIFAR-100 defaults)."""

    ce_weight: float = hp(1.0, ge=0, doc="CE weight (mdistiller REVIEWKD.CE_WEIGHT, authors' --ce-loss-weight)")
    reviewkd_weight: float = hp(1.0, ge=0, doc="HCL weight (REVIEWKD_WEIGHT; the released configs set it per pair, up to 8)")
    warmup_epochs: float = hp(20.0, ge=0, doc="linear warm-up of the HCL weight, min(epoch / warmup_epochs, 1); 0 = none")
    max_mid_channel: int = hp(512, ge=1, doc="ABF mid channels = min(this, student pooled dim), as both references compute")


@register_method("reviewkd", ReviewKDParams,
                 "ReviewKD: CE + HCL between ABF-fused student features (deep to shallow) and teacher features")
class ReviewKD(TeacherDistiller):
    """CE + warmed-up ``reviewkd_weight`` x HCL(ABF(student levels), teacher levels)."""

    params: ReviewKDParams

    def __init__(self, student: nn.Module, teacher: nn.Module, params: ReviewKDParams, data: DataInfo) -> None:
        super().__init__(student, teacher, params, data)
        if teacher is None:
            raise UserError("reviewkd needs a teacher (set teacher.arch and teacher.checkpoint)")
        s_shapes = feature_shapes(student)
        levels = review_levels(s_shapes, feature_shapes(teacher))
        self.mid_channels = min(params.max_mid_channel, s_shapes.pooled)
        self.fusion = ReviewFusion(levels, self.mid_channels)

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        p = self.params
        s_out, t_out = self.features_of_standard_view(batch)  # teacher first
        fused = self.fusion(level_features(s_out))
        hcl = hcl_loss(fused, level_features(t_out))
        losses = {
            "ce": p.ce_weight * self.cross_entropy(s_out.logits, batch.labels),
            "reviewkd": p.reviewkd_weight * warmup_factor(epoch, p.warmup_epochs) * hcl,
        }
        return StepOutput(logits=s_out.logits, losses=losses, stats={"hcl": hcl.detach()})
