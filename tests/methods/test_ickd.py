"""Inter-channel correlation KD (`ickd`): Gram matrices and loss against naive loops; the Distiller."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from pckd.data.info import DataInfo
from pckd.errors import UserError
from pckd.methods.ickd import ICKD, ICKDParams, channel_gram, ickd_loss
from pckd.models import create_model
from tests.methods.scaffold import (
    assert_grads_reach,
    assert_teacher_untouched,
    make_batch,
    teacher_snapshot,
)

NUM_CLASSES = 10


# ---- naive reference ----------------------------------------------------------------------------------------
def naive_gram(sample: list[list[list[float]]]) -> list[list[float]]:
    """One sample [C][H][W] -> row-normalised [C][C] Gram matrix."""
    flat = [[v for row in ch for v in row] for ch in sample]
    gram = [[sum(a * b for a, b in zip(fi, fj)) for fj in flat] for fi in flat]
    # F.normalize's clamp: an all-zero row (a dead post-ReLU channel) stays zero
    return [[v / max(math.sqrt(sum(x * x for x in row)), 1e-12) for v in row] for row in gram]


def naive_ickd(student: Tensor, teacher: Tensor) -> float:
    s, t = student.double().tolist(), teacher.double().tolist()
    b, c = len(s), len(s[0])
    total = 0.0
    for i in range(b):
        gs, gt = naive_gram(s[i]), naive_gram(t[i])
        total += sum((gs[p][q] - gt[p][q]) ** 2 for p in range(c) for q in range(c))
    return total / (c * b)


# ---- pure functions -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gram_matches_naive_loop(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, 2, generator=g, dtype=dtype)
    got = channel_gram(x)
    assert got.shape == (2, 4, 4) and got.dtype == dtype
    want = torch.tensor([naive_gram(x[i].double().tolist()) for i in range(2)], dtype=torch.float64)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("teacher_hw", [(3, 3), (2, 1)])  # same and different spatial size
def test_loss_matches_naive_loop(dtype, teacher_hw):
    g = torch.Generator().manual_seed(1)
    s = torch.randn(3, 5, 3, 3, generator=g, dtype=dtype)
    t = torch.relu(torch.randn(3, 5, *teacher_hw, generator=g, dtype=dtype)) + 0.1
    got = ickd_loss(s, t)
    assert got.dim() == 0
    assert got.item() == pytest.approx(naive_ickd(s, t), rel=1e-5)


def test_loss_hand_value():
    # Student: channels orthogonal -> G = diag -> normalised identity. Teacher: channels equal -> every row
    # (1, 1)/sqrt(2). Difference per row: (1 - 1/sqrt2, -1/sqrt2): squared sum = 2 - sqrt2; two rows, C = 2, B = 1.
    s = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]]])
    t = torch.tensor([[[[1.0, 1.0]], [[1.0, 1.0]]]])
    assert ickd_loss(s, t).item() == pytest.approx(2 * (2 - math.sqrt(2)) / 2, rel=1e-6)
    assert ickd_loss(t, t * 3).item() == pytest.approx(0.0, abs=1e-7)  # scale-invariant


def test_loss_rejects_channel_mismatch():
    with pytest.raises(ValueError, match="channels"):
        ickd_loss(torch.ones(2, 3, 2, 2), torch.ones(2, 4, 2, 2))


# ---- the Distiller -------------------------------------------------------------------------------------------
def make(teacher: str, student: str, **params) -> ICKD:
    torch.manual_seed(0)
    d = ICKD(create_model(student, NUM_CLASSES), create_model(teacher, NUM_CLASSES), ICKDParams(**params),
             DataInfo(num_classes=NUM_CLASSES))
    d.train()
    return d


@pytest.mark.parametrize(
    ("teacher", "student", "kd_weight"),
    [("resnet8x4", "resnet8", 1.0), ("resnet8", "MobileNetV2", 0.0)],  # second pair: 8x8 teacher, 2x2 student
)
def test_forward_train_step(teacher, student, kd_weight):
    d = make(teacher, student, kd_weight=kd_weight)
    teacher_state = teacher_snapshot(d.teacher)
    out = d.forward_train(make_batch(4, NUM_CLASSES), 1)
    assert set(out.losses) == ({"ce", "kd", "ickd"} if kd_weight else {"ce", "ickd"})
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.losses.values())
    assert out.logits.shape == (4, NUM_CLASSES)
    out.total.backward()
    assert_grads_reach(d.student, finite=True)
    assert_grads_reach(d.embed, nonzero=True)
    assert_teacher_untouched(d.teacher, teacher_state)
    assert d.extra_parameters() == sum(p.numel() for p in d.embed.parameters())


def test_step_loss_is_weighted_formula_of_the_embedded_maps():
    d = make("resnet8", "wrn_16_1", ickd_weight=2.5)
    batch = make_batch(4, NUM_CLASSES, 3)
    out = d.forward_train(batch, 1)
    x = batch.augment.standard(batch.images)
    with torch.no_grad():
        embedded = d.embed(d.student.forward_features(x).stages[-1])  # train-mode BN: same batch statistics
        t_map = d.teacher.forward_features(x).stages[-1]
    assert embedded.shape[1] == t_map.shape[1] == 64
    assert out.losses["ickd"].item() == pytest.approx(2.5 * naive_ickd(embedded, t_map), rel=1e-4)


def test_params_validation_names_the_key():
    with pytest.raises(UserError, match="ickd.ickd_weight"):
        ICKDParams(ickd_weight=-1.0)
    with pytest.raises(UserError, match="ickd.temperature"):
        ICKDParams(temperature=0.0)
