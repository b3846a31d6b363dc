"""FitNets: the hint MSE against a naive sum, the regressor for every size case, and one step on zoo pairs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pckd.data.info import DataInfo
from pckd.errors import UserError
from pckd.methods.fitnet import FitNet, FitNetParams, HintRegressor, hint_loss
from pckd.models import create_model
from tests.methods.scaffold import (
    assert_grads_reach,
    assert_teacher_untouched,
    make_batch,
    teacher_snapshot,
)

K = 10


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hint_loss_matches_naive(dtype):
    g = torch.Generator().manual_seed(0)
    f_s = torch.randn(2, 3, 2, 2, generator=g, dtype=dtype)
    f_t = torch.randn(2, 3, 2, 2, generator=g, dtype=dtype)
    a, b = f_s.double().flatten().tolist(), f_t.double().flatten().tolist()
    expected = sum((x - y) ** 2 for x, y in zip(a, b)) / len(a)
    got = hint_loss(f_s, f_t)
    assert got.dtype == dtype
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_hint_loss_hand_value_and_shape_check():
    # differences (1, -1, 2, 0): squares sum to 6, mean 1.5
    assert hint_loss(torch.tensor([[1.0, 0.0, 3.0, 5.0]]), torch.tensor([[0.0, 1.0, 1.0, 5.0]])).item() == 1.5
    with pytest.raises(ValueError, match="equal shapes"):
        hint_loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 3, 2, 2))


@pytest.mark.parametrize(
    "s_shape, t_shape, conv_type, kernel, stride",
    [
        ((8, 16, 16), (12, 8, 8), nn.Conv2d, (3, 3), (2, 2)),  # student twice as large: strided conv
        ((8, 8, 8), (12, 16, 16), nn.ConvTranspose2d, (4, 4), (2, 2)),  # student half as large: transposed conv
        ((8, 8, 8), (12, 8, 8), nn.Conv2d, (1, 1), (1, 1)),  # equal sizes: 1x1 conv
        ((8, 7, 9), (12, 4, 4), nn.Conv2d, (4, 6), (1, 1)),  # otherwise larger: "valid" conv 1 + s - t
    ],
)
def test_regressor_maps_student_shape_to_teacher_shape(s_shape, t_shape, conv_type, kernel, stride):
    reg = HintRegressor(s_shape, t_shape)
    assert type(reg.conv) is conv_type
    assert reg.conv.kernel_size == kernel and reg.conv.stride == stride
    assert reg.bn.num_features == t_shape[0]
    out = reg(torch.randn(3, *s_shape))
    assert out.shape == (3, *t_shape)
    assert (out >= 0).all()  # conv -> BN -> ReLU


def test_regressor_rejects_unsupported_sizes_naming_both_shapes():
    with pytest.raises(UserError, match=r"student map \(8, 4, 4\) onto the teacher hint \(12, 16, 16\)"):
        HintRegressor((8, 4, 4), (12, 16, 16))  # student four times smaller


def test_params_validate():
    with pytest.raises(UserError, match="fitnet.hint_weight"):
        FitNetParams(hint_weight=-1.0)
    with pytest.raises(UserError, match="fitnet.hint_layer"):
        FitNetParams(hint_layer=-1)


# ---- one training step on real zoo models -------------------------------------------------------------------
# Small stand-ins for the paper's resnet32x4 -> resnet8x4 and wrn_40_2 -> wrn_16_2 (same families, different
# widths: 1x1 regressor), plus resnet8 -> MobileNetV2 whose stage-2 map is half the teacher's (transposed conv).
@pytest.mark.parametrize(
    "teacher_name, student_name, conv_type",
    [
        ("resnet8x4", "resnet8", nn.Conv2d),
        ("wrn_16_2", "wrn_16_1", nn.Conv2d),
        ("resnet8", "MobileNetV2", nn.ConvTranspose2d),
    ],
)
def test_forward_train_on_zoo_pair(teacher_name, student_name, conv_type):
    torch.manual_seed(0)
    teacher, student = create_model(teacher_name, K), create_model(student_name, K)
    d = FitNet(student, teacher, FitNetParams(), DataInfo(num_classes=K))
    assert type(d.regressor.conv) is conv_type
    d.train()
    before = teacher_snapshot(teacher)
    batch = make_batch(4, K)
    out = d.forward_train(batch, 1)
    assert set(out.losses) == {"ce", "hint"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.losses.values())
    assert out.losses["hint"].item() > 0
    # the term is hint_weight x the MSE of regressor(student stage 2) to teacher stage 2 (RepDistiller hint_layer 2);
    # recomputed in train mode, where BatchNorm uses the same batch statistics
    x = batch.augment.standard(batch.images)
    with torch.no_grad():
        guided = d.regressor(student.forward_features(x).stages[2]).double()
        hint = teacher.forward_features(x).stages[2].double()
    assert out.losses["hint"].item() == pytest.approx(100.0 * ((guided - hint) ** 2).mean().item(), rel=1e-5)
    out.total.backward()
    assert_grads_reach(student)
    head = list(d.regressor.parameters())
    assert_grads_reach(head, nonzero=True)
    assert d.extra_parameters() == sum(p.numel() for p in head)
    assert_teacher_untouched(teacher, before)


def test_hint_layer_out_of_range_is_rejected():
    teacher, student = create_model("resnet8", K), create_model("resnet8", K)  # 4 stages: indices 0..3
    with pytest.raises(UserError, match="fitnet.hint_layer=4 is out of range"):
        FitNet(student, teacher, FitNetParams(hint_layer=4), DataInfo(num_classes=K))
