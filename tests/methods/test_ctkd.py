"""CTKD (`ctkd`): gradient-reversal sign and strength, the cosine curriculum, KD at a tensor temperature against a
naive loop, and the temperature's gradient against finite differences of the naive loss."""

from __future__ import annotations

import math

import pytest
import torch

from pckd.data.info import DataInfo
from pckd.errors import UserError
from pckd.methods.ctkd import (
    CTKD,
    CTKDParams,
    bounded_temperature,
    cosine_strength,
    kd_per_sample_at,
    reverse_gradient,
)
from pckd.models import create_model
from tests.methods.scaffold import (
    NormalisingAugmenter,
    assert_grads_reach,
    assert_teacher_untouched,
    make_batch,
    teacher_snapshot,
)


class DoubleViews(NormalisingAugmenter):
    """The scaffold's views in float64 (the models run in float64 so finite differences are accurate)."""

    def standard(self, images: torch.Tensor) -> torch.Tensor:
        return super().standard(images).double()


def _softmax(row: list[float], T: float) -> list[float]:
    m = max(row)
    e = [math.exp((v - m) / T) for v in row]
    return [v / sum(e) for v in e]


def naive_kd(s: list[float], t: list[float], T: float) -> float:
    ps, pt = _softmax(s, T), _softmax(t, T)
    return T * T * sum(a * math.log(a / b) for a, b in zip(pt, ps))


def test_gradient_reversal_is_identity_forward_and_minus_strength_backward():
    x = torch.tensor([2.0, -1.0], requires_grad=True)
    y = reverse_gradient(x, 0.5)
    assert torch.equal(y, x.detach())
    (3.0 * y).sum().backward()
    assert x.grad.tolist() == [-1.5, -1.5]  # d(3y)/dx = 3, reversed and scaled by 0.5
    z = torch.tensor([1.0], requires_grad=True)
    (reverse_gradient(z, 0.0) * 7).sum().backward()
    assert z.grad.tolist() == [0.0]  # strength 0 (epoch 0 of the curriculum): the temperature does not move


def test_cosine_curriculum_by_hand():
    # lambda(e) = (1 - cos(pi e / 10)) / 2 for e <= 10, then 1 (the authors' CosineDecay(0, -1, 10) negated).
    assert cosine_strength(0, 0.0, 1.0, 10) == 0.0
    assert cosine_strength(1, 0.0, 1.0, 10) == pytest.approx((1 - math.cos(math.pi / 10)) / 2)
    assert cosine_strength(1, 0.0, 1.0, 10) == pytest.approx(0.024471741852423, rel=1e-12)
    assert cosine_strength(5, 0.0, 1.0, 10) == pytest.approx(0.5)
    assert [cosine_strength(e, 0.0, 1.0, 10) for e in (10, 11, 240)] == [1.0, 1.0, 1.0]
    assert cosine_strength(3, 0.2, 2.0, 0) == 2.0  # no curriculum
    assert cosine_strength(5, 0.2, 2.0, 10) == pytest.approx(0.2 + 1.8 * 0.5)


def test_bounded_temperature_and_its_initial_value():
    assert bounded_temperature(torch.tensor(0.0), 1.0, 20.0).item() == pytest.approx(11.0)
    assert bounded_temperature(torch.tensor(1.0), 1.0, 20.0).item() == pytest.approx(1 + 20 / (1 + math.exp(-1)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kd_at_tensor_temperature_matches_naive_loop(dtype):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 6, generator=g, dtype=dtype) * 3, torch.randn(5, 6, generator=g, dtype=dtype) * 3
    tol = {"rel": 1e-4, "abs": 1e-6} if dtype == torch.float32 else {"rel": 1e-10, "abs": 1e-12}
    got = kd_per_sample_at(s, t, torch.tensor(7.5, dtype=dtype))
    assert got.tolist() == pytest.approx([naive_kd(s[i].tolist(), t[i].tolist(), 7.5) for i in range(5)], **tol)
    per_row = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0], dtype=dtype)  # one temperature per sample
    got = kd_per_sample_at(s, t, per_row)
    assert got.tolist() == pytest.approx([naive_kd(s[i].tolist(), t[i].tolist(), float(per_row[i]))
                                          for i in range(5)], **tol)


@pytest.mark.parametrize("key, value", [("t_start", 0.0), ("t_range", -1.0), ("lambda_loops", -1), ("lambda_max", -1.0)])
def test_invalid_params_name_the_key(key, value):
    with pytest.raises(UserError, match=f"ctkd.{key}"):
        CTKDParams(**{key: value})


@pytest.mark.parametrize("epoch", [1, 12])
def test_temperature_gradient_is_the_reversed_gradient_of_the_kd_term(epoch):
    torch.manual_seed(0)
    teacher, student = create_model("resnet8", 10), create_model("resnet8", 10)
    teacher.double()
    method = CTKD(student, teacher, CTKDParams(), DataInfo(num_classes=10)).double()
    method.train()
    teacher = method.teacher  # the distiller's own (folded) copy
    before = teacher_snapshot(teacher)
    batch = make_batch(4, 10, seed=1, labels="cycle", augment=DoubleViews(mean=0.0, std=1.0))
    out = method.forward_train(batch, epoch)
    assert set(out.losses) == {"ce", "kd"} and method.extra_parameters() == 1
    T0 = 1 + 20 / (1 + math.exp(-1))
    assert out.stats["temperature"].item() == pytest.approx(T0, rel=1e-12)
    lam = (1 - math.cos(math.pi * min(epoch, 10) / 10)) / 2
    assert out.stats["grl_lambda"].item() == pytest.approx(lam)

    with torch.no_grad():
        t_logits = teacher(batch.augment.standard(batch.images)).tolist()
    s_logits = out.logits.detach().tolist()

    def naive_total(raw: float) -> float:  # 0.9 * batch-mean KD at T(raw), python floats
        T = 1 + 20 / (1 + math.exp(-raw))
        return 0.9 * sum(naive_kd(s_logits[i], t_logits[i], T) for i in range(4)) / 4

    assert out.losses["kd"].item() == pytest.approx(naive_total(1.0), rel=1e-9)
    out.total.backward()
    h = 1e-3  # five-point central difference, error O(h^4)
    d_loss = (-naive_total(1 + 2 * h) + 8 * naive_total(1 + h) - 8 * naive_total(1 - h) + naive_total(1 - 2 * h)) / (12 * h)
    # The temperature ascends the KD loss (reversed sign), scaled by the curriculum's strength.
    assert method.temperature_raw.grad.item() == pytest.approx(-lam * d_loss, rel=1e-5)
    assert_grads_reach(method.student, finite=True)
    assert_teacher_untouched(teacher, before)


def test_state_dict_carries_the_temperature():
    torch.manual_seed(0)
    method = CTKD(create_model("resnet8", 10), create_model("resnet8", 10), CTKDParams(init_raw=0.0),
                  DataInfo(num_classes=10))
    assert method.state_dict()["temperature_raw"].tolist() == [0.0]


def naive_dkd(s: list[float], t: list[float], label: int, T: float, alpha: float, beta: float) -> float:
    """alpha * TCKD + beta * NCKD of one sample at temperature T, in python floats (the DKD paper's Eq. 7)."""
    ps, pt = _softmax(s, T), _softmax(t, T)
    bs, bt = [ps[label], 1 - ps[label]], [pt[label], 1 - pt[label]]
    tckd = sum(a * math.log(a / b) for a, b in zip(bt, bs))
    qs = _softmax([v for k, v in enumerate(s) if k != label], T)
    qt = _softmax([v for k, v in enumerate(t) if k != label], T)
    nckd = sum(a * math.log(a / b) for a, b in zip(qt, qs))
    return T * T * (alpha * tckd + beta * nckd)


def _method(params: CTKDParams, seed: int = 0) -> tuple[CTKD, torch.nn.Module]:
    torch.manual_seed(seed)
    teacher, student = create_model("resnet8", 10), create_model("resnet8", 10)
    teacher.double()
    method = CTKD(student, teacher, params, DataInfo(num_classes=10)).double()
    method.train()
    return method, method.teacher


def _five_point(f, x: float, h: float = 1e-3) -> float:
    return (-f(x + 2 * h) + 8 * f(x + h) - 8 * f(x - h) + f(x - 2 * h)) / (12 * h)


def test_dkd_at_a_learned_temperature_matches_a_naive_loop_and_its_gradient_is_reversed():
    # The authors' DKD+CTKD: -r 1 -a 0 -b 1 --dkd_alpha 1 --dkd_beta 2 (scripts/run_cifar_distill.sh).
    method, teacher = _method(CTKDParams(ce_weight=1.0, kd_weight=0.0, dkd_weight=1.0))
    batch = make_batch(4, 10, seed=2, labels="cycle", augment=DoubleViews(mean=0.0, std=1.0))
    out = method.forward_train(batch, 5)
    assert set(out.losses) == {"ce", "dkd"}
    with torch.no_grad():
        t_logits = teacher(batch.augment.standard(batch.images)).tolist()
    s_logits, labels = out.logits.detach().tolist(), batch.labels.tolist()

    def naive_total(raw: float) -> float:
        T = 1 + 20 / (1 + math.exp(-raw))
        return sum(naive_dkd(s_logits[i], t_logits[i], labels[i], T, 1.0, 2.0) for i in range(4)) / 4

    assert out.losses["dkd"].item() == pytest.approx(naive_total(1.0), rel=1e-9)
    out.total.backward()
    lam = (1 - math.cos(math.pi * 5 / 10)) / 2
    assert method.temperature_raw.grad.item() == pytest.approx(-lam * _five_point(naive_total, 1.0), rel=1e-5)


def test_dkd_parts_accept_one_temperature_per_sample():
    from pckd.methods.dkd import nckd_per_sample, tckd_per_sample

    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(4, 7, generator=g, dtype=torch.float64) * 2, torch.randn(4, 7, generator=g, dtype=torch.float64) * 2
    labels = torch.tensor([0, 3, 6, 3])
    T = torch.tensor([1.0, 2.5, 4.0, 9.0], dtype=torch.float64)
    got = (tckd_per_sample(s, t, labels, T) + 3.0 * nckd_per_sample(s, t, labels, T)).tolist()
    want = [naive_dkd(s[i].tolist(), t[i].tolist(), int(labels[i]), float(T[i]), 1.0, 3.0) for i in range(4)]
    assert got == pytest.approx(want, rel=1e-10)


def test_instance_wise_temperature_starts_at_the_global_value_and_ascends_the_loss():
    params = CTKDParams(temperature_module="instance", instance_hidden=8)
    method, teacher = _method(params)
    assert method.temperature_raw is None
    assert method.extra_parameters() == (20 * 8 + 8) + (8 + 1)  # Linear(2K, 8) + Linear(8, 1)
    batch = make_batch(4, 10, seed=1, labels="cycle", augment=DoubleViews(mean=0.0, std=1.0))
    out = method.forward_train(batch, 12)
    T0 = 1 + 20 / (1 + math.exp(-1))
    assert out.stats["temperature"].item() == pytest.approx(T0, rel=1e-12)  # zero last layer: every sample at T0
    assert out.stats["temperature_std"].item() == pytest.approx(0.0, abs=1e-12)
    with torch.no_grad():
        t_logits = teacher(batch.augment.standard(batch.images)).tolist()
    s_logits = out.logits.detach().tolist()

    def naive_total(bias: float) -> float:  # the last bias shifts every sample's raw value alike while weights are 0
        T = 1 + 20 / (1 + math.exp(-bias))
        return 0.9 * sum(naive_kd(s_logits[i], t_logits[i], T) for i in range(4)) / 4

    out.total.backward()
    last = method.instance_temperature.out
    assert last.bias.grad.item() == pytest.approx(-1.0 * _five_point(naive_total, 1.0), rel=1e-5)  # lambda 1 at 12
    assert last.weight.grad.abs().sum().item() > 0  # the per-sample weights learn from the first step


def test_instance_wise_temperatures_differ_per_sample_and_the_student_gets_no_reversed_gradient():
    params = CTKDParams(temperature_module="instance", instance_hidden=8)
    method, _ = _method(params)
    torch.nn.init.normal_(method.instance_temperature.out.weight, std=0.5)
    batch = make_batch(6, 10, seed=4, labels="cycle", augment=DoubleViews(mean=0.0, std=1.0))
    out = method.forward_train(batch, 12)
    assert out.stats["temperature_std"].item() > 1e-3
    # The student's gradient equals that of the same loss at the module's (fixed) temperatures: the module reads
    # detached logits, so the reversal never reaches the student.
    logits = out.logits
    T = bounded_temperature(method.instance_temperature(method.teacher(batch.augment.standard(batch.images)),
                                                         logits), 1.0, 20.0).detach()
    with torch.no_grad():
        t_logits = method.teacher(batch.augment.standard(batch.images))
    fixed = 0.1 * method.cross_entropy(logits, batch.labels) + 0.9 * kd_per_sample_at(logits, t_logits, T).mean()
    g_method = torch.autograd.grad(out.total, logits, retain_graph=True)[0]
    g_fixed = torch.autograd.grad(fixed, logits)[0]
    assert torch.allclose(g_method, g_fixed, rtol=1e-10, atol=1e-13)


def test_no_distillation_term_is_refused():
    with pytest.raises(UserError, match="ctkd.kd_weight and ctkd.dkd_weight"):
        CTKD(create_model("resnet8", 10), create_model("resnet8", 10), CTKDParams(kd_weight=0.0),
             DataInfo(num_classes=10))


def test_unknown_temperature_module_names_the_key():
    with pytest.raises(UserError, match="ctkd.temperature_module"):
        CTKDParams(temperature_module="per_class")
