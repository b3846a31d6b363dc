"""FT: the factor and its L1 loss by loops, the paraphraser/translator, the init/main stage switch, and which
parts train in each stage on real zoo pairs."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from pckd.data.info import DataInfo
from pckd.errors import UserError
from pckd.methods.base import method_registry
from pckd.methods.ft import (
    FT,
    FTParams,
    Paraphraser,
    Translator,
    factor_transfer_loss,
    ft_factor,
    reconstruction_loss,
)
from pckd.models import create_model
from tests.methods.scaffold import make_batch

K = 10
B = 4


# ---- naive references --------------------------------------------------------------------------------------
def naive_pool(x: list, h: int, w: int) -> list:
    """Average pooling of [B][C][H][W] lists to h x w, H and W multiples of h and w."""
    kh, kw = len(x[0][0]) // h, len(x[0][0][0]) // w
    return [[[[sum(ch[kh * i + a][kw * j + b] for a in range(kh) for b in range(kw)) / (kh * kw) for j in range(w)]
              for i in range(h)] for ch in xb] for xb in x]


def naive_factor(x: list, p: float) -> list[list[float]]:
    """Per sample: the channel mean of |x|^p at each position (row-major), divided by its L2 norm."""
    out = []
    for xb in x:
        h, w = len(xb[0]), len(xb[0][0])
        v = [sum(abs(ch[i][j]) ** p for ch in xb) / len(xb) for i in range(h) for j in range(w)]
        norm = math.sqrt(sum(a * a for a in v))
        out.append([a / norm for a in v])
    return out


def naive_ft_loss(f_s: torch.Tensor, f_t: torch.Tensor, factor_p: float, loss_p: float) -> float:
    s, t = f_s.double().tolist(), f_t.double().tolist()
    h, w = min(f_s.shape[2], f_t.shape[2]), min(f_s.shape[3], f_t.shape[3])
    s, t = naive_pool(s, h, w), naive_pool(t, h, w)
    diffs = [abs(a - b) ** loss_p for ra, rb in zip(naive_factor(s, factor_p), naive_factor(t, factor_p))
             for a, b in zip(ra, rb)]
    return sum(diffs) / len(diffs)


# ---- pure losses ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_factor_matches_loop(dtype):
    g = torch.Generator().manual_seed(0)
    f = torch.randn(2, 3, 2, 3, generator=g, dtype=torch.float64)
    got = ft_factor(f.to(dtype), 2.0)
    assert got.shape == (2, 6) and got.dtype == dtype
    expected = naive_factor(f.tolist(), 2.0)
    assert got.double().flatten().tolist() == pytest.approx([a for r in expected for a in r], rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("s_side, t_side, loss_p", [(2, 2, 1.0), (4, 2, 1.0), (2, 4, 1.0), (2, 2, 2.0)])
def test_factor_transfer_loss_matches_loop(dtype, s_side, t_side, loss_p):
    g = torch.Generator().manual_seed(1)
    f_s = torch.randn(3, 4, s_side, s_side, generator=g, dtype=torch.float64)  # factors: LeakyReLU, either sign
    f_t = torch.randn(3, 5, t_side, t_side, generator=g, dtype=torch.float64)
    got = factor_transfer_loss(f_s.to(dtype), f_t.to(dtype), 2.0, loss_p)
    assert got.dtype == dtype
    expected = naive_ft_loss(f_s, f_t, 2.0, loss_p)
    assert got.item() == pytest.approx(expected, rel=1e-10 if dtype == torch.float64 else 1e-5)


def test_factor_transfer_hand_value():
    # one sample, one channel, 1x2 maps: factors (1, 0) and (0, 1) after squaring and normalising -> mean |diff| = 1
    f_s = torch.tensor([[[[3.0, 0.0]]]])
    f_t = torch.tensor([[[[0.0, -2.0]]]])
    assert factor_transfer_loss(f_s, f_t).item() == pytest.approx(1.0)
    assert factor_transfer_loss(f_s, 5 * f_s).item() == 0.0  # scale-free


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reconstruction_loss_matches_loop(dtype):
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(2, 3, 2, 2, generator=g, dtype=dtype), torch.randn(2, 3, 2, 2, generator=g, dtype=dtype)
    pairs = list(zip(a.double().flatten().tolist(), b.double().flatten().tolist()))
    assert reconstruction_loss(a, b).item() == pytest.approx(sum((x - y) ** 2 for x, y in pairs) / len(pairs),
                                                             rel=1e-6)


# ---- heads ---------------------------------------------------------------------------------------------------
def test_paraphraser_and_translator_structure():
    para = Paraphraser(8, 0.5)
    enc = [(m.in_channels, m.out_channels) for m in para.encoder if isinstance(m, nn.Conv2d)]
    dec = [(m.in_channels, m.out_channels) for m in para.decoder if isinstance(m, nn.ConvTranspose2d)]
    assert enc == [(8, 8), (8, 4), (4, 4)] and dec == [(4, 4), (4, 8), (8, 8)]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in para.modules())
    slopes = [m.negative_slope for m in para.modules() if isinstance(m, nn.LeakyReLU)]
    assert slopes == [0.1] * 6
    x = torch.randn(2, 8, 4, 4)
    assert para.encode(x).shape == (2, 4, 4, 4) and para(x).shape == x.shape
    trans = Translator(6, 8, 0.5)
    convs = [(m.in_channels, m.out_channels) for m in trans.encoder if isinstance(m, nn.Conv2d)]
    assert convs == [(6, 6), (6, 4), (4, 4)]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in trans.modules()) == 3
    assert trans(torch.randn(2, 6, 2, 2)).shape == (2, 4, 2, 2)
    with pytest.raises(UserError, match="ft.rate"):
        Paraphraser(1, 0.5)


def test_defaults_registry_and_validation():
    assert FTParams() == FTParams(ce_weight=1.0, ft_weight=200.0, rate=0.5, factor_p=2.0, loss_p=1.0, init_epochs=30)
    assert method_registry()["ft"].cls is FT
    with pytest.raises(UserError, match="ft.init_epochs"):
        FTParams(init_epochs=-2)
    with pytest.raises(UserError, match="ft.rate"):
        FTParams(rate=0.0)


# ---- training steps on real zoo pairs ------------------------------------------------------------------------
def build(teacher: str, student: str, **kw) -> FT:
    torch.manual_seed(0)
    d = FT(create_model(student, K), create_model(teacher, K), FTParams(**kw), DataInfo(num_classes=K))
    d.train()
    return d


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def unchanged(module: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_stage_switch_at_init_epochs():
    d = build("resnet8", "resnet8", init_epochs=2)
    batch = make_batch(B, K)
    assert set(d.forward_train(batch, 1).losses) == {"ft_init"}
    assert set(d.forward_train(batch, 2).losses) == {"ft_init"}
    assert set(d.forward_train(batch, 3).losses) == {"ce", "ft"}
    assert set(build("resnet8", "resnet8", init_epochs=0).forward_train(batch, 1).losses) == {"ce", "ft"}


# resnet8x4 -> resnet8: 256 vs 64 channels at 8x8; resnet8 -> MobileNetV2: the student's map (2x2) is smaller than
# the teacher's (8x8), so the teacher factor is pooled.
@pytest.mark.parametrize("teacher_name, student_name", [("resnet8x4", "resnet8"), ("resnet8", "MobileNetV2")])
def test_init_stage_trains_only_the_paraphraser(teacher_name, student_name):
    d = build(teacher_name, student_name)
    teacher, student = d.teacher, d.student
    teacher.requires_grad_(True)  # even so, no gradient may reach it
    t_before, s_before, tr_before = snapshot(teacher), snapshot(student), snapshot(d.translator)
    opt = torch.optim.SGD([p for p in d.parameters() if p.requires_grad], lr=0.1, momentum=0.9, weight_decay=5e-4)
    p_before = snapshot(d.paraphraser)
    batch = make_batch(B, K)
    out = d.forward_train(batch, 1)
    assert set(out.losses) == {"ft_init"} and out.logits.shape == (B, K)
    assert student.training  # its mode is restored after the eval-mode logits pass
    # the autoencoder loss of the teacher's last stage map, recomputed element by element
    x = batch.augment.standard(batch.images)
    with torch.no_grad():
        f_t = teacher.forward_features(x).stages[-1]
        rec = d.paraphraser(f_t)
    pairs = list(zip(rec.double().flatten().tolist(), f_t.double().flatten().tolist()))
    expected = sum((a - b) ** 2 for a, b in pairs) / len(pairs)
    assert out.losses["ft_init"].item() == pytest.approx(expected, rel=1e-5)
    opt.zero_grad(set_to_none=True)
    out.total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.paraphraser.parameters())
    assert all(p.grad is None for p in student.parameters())
    assert all(p.grad is None for p in d.translator.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    opt.step()
    assert not unchanged(d.paraphraser, p_before)
    # student (weights and BatchNorm statistics) and translator untouched, weight decay included
    assert unchanged(student, s_before) and unchanged(d.translator, tr_before)
    assert unchanged(teacher, t_before) and not teacher.training


@pytest.mark.parametrize("teacher_name, student_name", [("resnet8x4", "resnet8"), ("resnet8", "MobileNetV2")])
def test_main_stage_trains_student_and_translator_with_frozen_paraphraser(teacher_name, student_name):
    d = build(teacher_name, student_name)
    teacher, student = d.teacher, d.student
    t_before, p_before = snapshot(teacher), snapshot(d.paraphraser)
    opt = torch.optim.SGD([p for p in d.parameters() if p.requires_grad], lr=0.1, momentum=0.9, weight_decay=5e-4)
    batch = make_batch(B, K, 1)
    out = d.forward_train(batch, 31)
    assert set(out.losses) == {"ce", "ft"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.losses.values())
    # ft = 200 x the L1 factor loss of translator(student last map) vs paraphraser encoder(teacher last map)
    x = batch.augment.standard(batch.images)
    with torch.no_grad():
        f_s = d.translator(student.forward_features(x).stages[-1])  # train mode: same batch statistics
        f_t = d.paraphraser.encode(teacher.forward_features(x).stages[-1])
    assert out.losses["ft"].item() == pytest.approx(200.0 * naive_ft_loss(f_s, f_t, 2.0, 1.0), rel=1e-5)
    opt.zero_grad(set_to_none=True)
    out.total.backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.translator.parameters())
    assert all(p.grad is None for p in d.paraphraser.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert d.extra_parameters() == sum(p.numel() for p in d.paraphraser.parameters()) + sum(
        p.numel() for p in d.translator.parameters())
    opt.step()
    assert unchanged(d.paraphraser, p_before) and unchanged(teacher, t_before)


# ---- configs -------------------------------------------------------------------------------------------------
def test_configs_cover_all_pairs_with_extended_schedule():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    from configs_init_baselines import configs
    from make_configs import PAIRS

    cfgs = {k: v for k, v in configs().items() if k.startswith("cifar100/ft/")}
    assert len(cfgs) == len(PAIRS) == 13
    for path, cfg in cfgs.items():
        assert cfg["method"] == "ft" and path == f"cifar100/ft/{cfg['teacher']['arch']}-{cfg['student']['arch']}.yaml"
        assert FTParams(**cfg["ft"]) == FTParams()
        assert cfg["train"]["epochs"] == 270 and cfg["train"]["milestones"] == [180, 210, 240]
