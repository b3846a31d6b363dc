"""Sample-wise contrastive KD (`ckd`): the loss against naive loops and hand values, options, the Distiller."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from pckd.data.batch import Batch
from pckd.data.info import DataInfo
from pckd.errors import UserError
from pckd.methods.ckd import CKD, CKDParams, ckd_loss, ckd_per_sample
from pckd.models.interface import FeatureOutput


# ---- naive reference (explicit loops; deliberately independent of the implementation) --------------------
def _unit(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def _neg_log_softmax(row: list[float], target: int) -> float:
    m = max(row)
    return -(row[target] - m - math.log(sum(math.exp(r - m) for r in row)))


def _naive_rows(anchor: list[list[float]], other: list[list[float]], tau: float, negatives: str) -> list[float]:
    """One direction: ``anchor`` plays the teacher, ``other`` the student."""
    n = len(anchor)
    out = []
    for i in range(n):
        row = []
        for j in range(n):
            if negatives == "teacher_student":
                row.append(_dot(anchor[i], other[j]) / tau)
            elif j == i:
                row.append(_dot(anchor[i], other[i]) / tau)  # the positive <t_i, s_i>
            else:
                row.append(_dot(other[i], other[j]) / tau)  # negatives <s_i, s_j>
        out.append(_neg_log_softmax(row, i))
    return out


def naive_ckd(student: Tensor, teacher: Tensor, tau: float, symmetric: bool, negatives: str) -> float:
    s = [_unit(r) for r in student.double().tolist()]
    t = [_unit(r) for r in teacher.double().tolist()]
    losses = _naive_rows(t, s, tau, negatives)
    if symmetric:
        back = _naive_rows(s, t, tau, negatives)
        losses = [0.5 * (a + b) for a, b in zip(losses, back)]
    return sum(losses) / len(losses)


# ---- loss tests ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("negatives", ["teacher_student", "student_student"])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("tau", [1.0, 0.3])
def test_ckd_matches_naive_loop(dtype, negatives, symmetric, tau):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(7, 5, generator=g, dtype=dtype)
    t = torch.randn(7, 5, generator=g, dtype=dtype)
    got = ckd_loss(s, t, tau, symmetric=symmetric, negatives=negatives)
    assert got.dtype == dtype and got.dim() == 0
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert got.item() == pytest.approx(naive_ckd(s, t, tau, symmetric, negatives), rel=tol, abs=tol)


def test_ckd_half_inputs_computed_in_float32():
    s, t = torch.randn(4, 6).bfloat16(), torch.randn(4, 6).bfloat16()
    got = ckd_loss(s, t, 1.0)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(naive_ckd(s.float(), t.float(), 1.0, False, "teacher_student"), rel=1e-5)


@pytest.mark.parametrize("negatives", ["teacher_student", "student_student"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_ckd_orthogonal_by_hand(negatives, symmetric):
    # t_hat = s_hat = identity: each row is [1/tau, 0] up to order, so every loss is log(1 + e^{-1/tau}).
    eye = torch.eye(2)
    for tau in (1.0, 0.5):
        expected = math.log(1 + math.exp(-1 / tau))
        got = ckd_loss(3 * eye, 2 * eye, tau, symmetric=symmetric, negatives=negatives)  # scale is irrelevant
        assert got.item() == pytest.approx(expected, rel=1e-6)


def test_ckd_non_orthogonal_by_hand():
    # t = I, s_1 = (1, 0), s_2 = (1, 1)/sqrt2 after normalisation; c = 1/sqrt2.
    t = torch.eye(2, dtype=torch.float64)
    s = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    c = 1 / math.sqrt(2)
    # teacher_student: S = [[1, c], [0, c]]
    row1 = -math.log(math.exp(1) / (math.exp(1) + math.exp(c)))
    row2 = -math.log(math.exp(c) / (math.exp(0) + math.exp(c)))
    assert ckd_loss(s, t, 1.0).item() == pytest.approx((row1 + row2) / 2, rel=1e-12)
    # student_student: row1 = [<t1,s1>=1, <s1,s2>=c], row2 = [<s2,s1>=c, <t2,s2>=c]
    row1 = -math.log(math.exp(1) / (math.exp(1) + math.exp(c)))
    row2 = -math.log(math.exp(c) / (math.exp(c) + math.exp(c)))
    assert ckd_loss(s, t, 1.0, negatives="student_student").item() == pytest.approx((row1 + row2) / 2, rel=1e-12)


def test_ckd_invalid_negatives_names_the_key():
    with pytest.raises(UserError, match=r"ckd\.negatives"):
        ckd_loss(torch.randn(3, 4), torch.randn(3, 4), 1.0, negatives="teacher_teacher")
    with pytest.raises(UserError, match=r"ckd\.negatives"):
        CKDParams(negatives="nope")
    with pytest.raises(UserError, match=r"ckd\.tau"):
        CKDParams(tau=0.0)


@pytest.mark.parametrize("negatives", ["teacher_student", "student_student"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_row_slices_reproduce_the_global_batch(negatives, symmetric):
    """What DDP with global negatives computes: each rank's rows against all columns; the average of the
    per-rank means (DDP's gradient average) equals the global loss, and so do the gradients."""
    g = torch.Generator().manual_seed(1)
    s = torch.randn(8, 5, generator=g, requires_grad=True)
    t = torch.randn(8, 5, generator=g)
    full = ckd_loss(s, t, 0.7, symmetric, negatives)
    (grad_full,) = torch.autograd.grad(full, s)
    world = 2
    per_rank = [
        ckd_per_sample(s, t, 0.7, symmetric, negatives, rows=slice(4 * r, 4 * r + 4)).mean() for r in range(world)
    ]
    averaged = sum(per_rank) / world
    (grad_ranks,) = torch.autograd.grad(averaged, s)
    assert averaged.item() == pytest.approx(full.item(), rel=1e-6)
    torch.testing.assert_close(grad_ranks, grad_full)


# ---- distiller ------------------------------------------------------------------------------------------
class FakeAugmenter:
    """Stands in for the data layer: a float view with a little random noise per call."""

    def standard(self, images: Tensor) -> Tensor:
        return images.float() / 255 + 0.01 * torch.randn(images.shape)

    def evaluate(self, images: Tensor) -> Tensor:
        return images.float() / 255


class FakeModel(nn.Module):
    def __init__(self, num_classes: int = 5, dim: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, dim, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(dim, num_classes)

    def forward_features(self, x: Tensor) -> FeatureOutput:
        fmap = self.body(x)
        pooled = fmap.mean(dim=(2, 3))
        return FeatureOutput(stages=[fmap], pooled=pooled, logits=self.fc(pooled))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x).logits

    @property
    def classifier_layer(self) -> nn.Linear:
        return self.fc

    @property
    def penultimate_dim(self) -> int:
        return self.fc.in_features


def _batch(b: int = 6, k: int = 5) -> Batch:
    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (b, 3, 8, 8), generator=g, dtype=torch.uint8)
    return Batch(images=images, labels=torch.arange(b) % k, index=torch.arange(b), augment=FakeAugmenter())


@pytest.mark.parametrize("negatives", ["teacher_student", "student_student"])
def test_distiller_step(negatives):
    torch.manual_seed(0)
    student, teacher = FakeModel(), FakeModel()
    params = CKDParams(weight=100.0, tau=1.0, negatives=negatives)
    method = CKD(student, teacher, params, DataInfo(num_classes=5))
    assert all(not p.requires_grad for p in teacher.parameters())
    assert {id(p) for p in method.parameters()} == {id(p) for p in student.parameters()}  # teacher not trained
    out = method(_batch(), epoch=1)
    assert set(out.losses) == {"ce", "ckd"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in out.losses.values())
    assert out.logits.shape == (6, 5)
    out.total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_distiller_loss_is_weighted_contrast_of_the_logits():
    torch.manual_seed(0)
    student, teacher = FakeModel(), FakeModel()
    method = CKD(student, teacher, CKDParams(ce_weight=0.5, weight=3.0, tau=2.0), DataInfo(num_classes=5))
    batch = _batch()
    torch.manual_seed(5)
    out = method(batch, epoch=1)
    torch.manual_seed(5)
    x = batch.augment.standard(batch.images)  # the same view
    with torch.no_grad():
        expected = 3.0 * ckd_loss(student(x), teacher(x), 2.0)
        ce = 0.5 * nn.functional.cross_entropy(student(x), batch.labels)
    torch.testing.assert_close(out.losses["ckd"].detach(), expected)
    torch.testing.assert_close(out.losses["ce"].detach(), ce)


# ---- DDP: global negatives over 2 gloo ranks -------------------------------------------------------------
class _PlainAugmenter:
    def standard(self, images: Tensor) -> Tensor:
        return images.float() / 255


def _ddp_worker(rank: int, world: int, init_file: str, result_file: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        student, teacher = FakeModel(), FakeModel()
        method = DDP(CKD(student, teacher, CKDParams(weight=10.0, tau=0.5), DataInfo(num_classes=5)))
        full = _batch(8)
        shard = slice(4 * rank, 4 * rank + 4)
        batch = Batch(full.images[shard], full.labels[shard], full.index[shard], _PlainAugmenter())
        out = method(batch, epoch=1)
        out.losses["ckd"].backward()
        if rank == 0:
            torch.save([p.grad.clone() for p in student.parameters()], result_file)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_global_negatives_match_single_process(tmp_path):
    """Two ranks with 4 samples each give the gradient of the 8-sample single-process loss."""
    import torch.multiprocessing as mp

    result = tmp_path / "grads.pt"
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(result)), nprocs=2, join=True)
    torch.manual_seed(0)
    student, teacher = FakeModel(), FakeModel()
    method = CKD(student, teacher, CKDParams(weight=10.0, tau=0.5), DataInfo(num_classes=5))
    full = _batch(8)
    method(Batch(full.images, full.labels, full.index, _PlainAugmenter()), epoch=1).losses["ckd"].backward()
    for got, want in zip(torch.load(result), [p.grad for p in student.parameters()]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
