"""SSKD (`sskd`): every term against naive per-sample Python loops written from the released ``student.py``, hand
values, the two stages of the Distiller (what trains in each), and the teacher stage's own lr schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from pckd.data.augment import Normalize, rotate_copies
from pckd.data.batch import Batch
from pckd.data.info import DataInfo
from pckd.engine.build import EpochSchedule
from pckd.errors import UserError
from pckd.methods.sskd import (
    SSKD,
    SSKDParams,
    copy_similarity,
    kept_rows,
    kl_of_kept,
    similarity_loss,
    split_copies,
    stage_rate,
    target_rank,
    teacher_ss_loss,
    transformation_loss,
)
from pckd.models import create_model
from tests.methods.scaffold import assert_teacher_untouched, spy_features, teacher_snapshot


# ---- naive references: python floats, one copy at a time, following the released student.py -----------------
def _cos(a: list[float], b: list[float], eps: float = 1e-8) -> float:
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(y * y for y in b))
    return sum(x * y for x, y in zip(a, b)) / (max(na, eps) * max(nb, eps))


def naive_similarity(emb: list[list[float]], n: int = 4) -> list[list[float]]:
    """Row (n-1)*i + j-1: copy j of image i against every unrotated embedding (rows n*b)."""
    images = len(emb) // n
    return [[_cos(emb[n * i + j], emb[n * b]) for b in range(images)] for i in range(images) for j in range(1, n)]


def _log_softmax(row: list[float], T: float = 1.0) -> list[float]:
    m = max(v / T for v in row)
    lse = m + math.log(sum(math.exp(v / T - m) for v in row))
    return [v / T - lse for v in row]


def _kl(student: list[float], teacher: list[float], T: float) -> float:
    ls, lt = _log_softmax(student, T), _log_softmax(teacher, T)
    return sum(math.exp(t) * (t - s) for s, t in zip(ls, lt)) * T * T


def _rank(row: list[float], target: int) -> int:
    order = sorted(range(len(row)), key=lambda k: -row[k])  # descending, as argsort(descending=True)
    return order.index(target)


def naive_keep(ranks: list[int], ratio: float) -> list[int]:
    """The released selection: sort by rank, keep the correct ones plus int(wrong * ratio), back in row order."""
    order = sorted(range(len(ranks)), key=lambda k: ranks[k])
    wrong = sum(r > 0 for r in ranks)
    return sorted(order[: len(ranks) - wrong + int(wrong * ratio)])


def naive_term(student: list[list[float]], teacher: list[list[float]], targets: list[int], T: float,
               ratio: float) -> tuple[float, list[int]]:
    keep = naive_keep([_rank(row, c) for row, c in zip(teacher, targets)], ratio)
    return sum(_kl(student[k], teacher[k], T) for k in keep) / len(keep), keep


def _randn(*shape: int, seed: int, dtype: torch.dtype = torch.float64) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---- pure functions ------------------------------------------------------------------------------------
def test_split_copies_follows_the_released_index_masks():
    x = torch.arange(12.0)[:, None]
    plain, rotated = split_copies(x)
    index = torch.arange(12)
    assert torch.equal(plain, x[index % 4 == 0]) and torch.equal(rotated, x[index % 4 != 0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_similarity_matches_a_naive_loop(dtype):
    emb = _randn(5 * 4, 7, seed=0, dtype=dtype)
    emb[6] = 0.0  # a zero embedding: the clamped norm gives similarity 0, not 0/0
    got = copy_similarity(emb)
    assert got.shape == (15, 5) and got.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    naive = [v for row in naive_similarity(emb.tolist()) for v in row]
    assert got.flatten().tolist() == pytest.approx(naive, abs=tol)
    # the released computation itself: expand both sides and call F.cosine_similarity
    plain, rotated = split_copies(emb)
    released = torch.nn.functional.cosine_similarity(rotated[:, :, None].expand(-1, -1, 5),
                                                     plain[:, :, None].expand(-1, -1, 15).transpose(0, 2), dim=1)
    assert torch.allclose(got, released, atol=tol)


def test_teacher_stage_loss_matches_a_naive_loop_and_a_hand_value():
    emb = _randn(6 * 4, 5, seed=1)
    sim = naive_similarity(emb.tolist())
    expected = sum(-_log_softmax(row)[k // 3] for k, row in enumerate(sim)) / len(sim)
    assert teacher_ss_loss(copy_similarity(emb)).item() == pytest.approx(expected, rel=1e-12)
    # By hand: image 0 embeds as (1, 0) in every copy, image 1 as (0, 1): each rotated copy's similarities are
    # 1 to its source and 0 to the other image, so every row's CE is log(1 + e^-1).
    by_hand = torch.tensor([[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 4, dtype=torch.float64)
    assert teacher_ss_loss(copy_similarity(by_hand)).item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-12)


def test_rank_and_kept_rows_by_hand():
    scores = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0], [1.0, 2.0, 3.0]])
    assert target_rank(scores, torch.tensor([0, 2, 1])).tolist() == [0, 1, 1]
    rank = torch.tensor([0, 2, 1, 0, 3, 1])
    # 4 wrong rows; ratio 0.5 keeps the 2 of rank 1, ratio 0.75 keeps int(3.0) = 3: ranks 1, 1 and 2.
    assert kept_rows(rank, 0.5).nonzero().flatten().tolist() == [0, 2, 3, 5]
    assert kept_rows(rank, 0.75).nonzero().flatten().tolist() == [0, 1, 2, 3, 5]
    assert kept_rows(rank, 1.0).all() and kept_rows(rank, 0.0).nonzero().flatten().tolist() == [0, 3]
    # ties at the cut are broken by row order (the released unstable argsort leaves them arbitrary)
    assert kept_rows(torch.tensor([1, 1, 1]), 0.5).nonzero().flatten().tolist() == [0]


@pytest.mark.parametrize("ratio", [1.0, 0.75, 0.3])
def test_transformation_term_matches_a_naive_loop(ratio):
    s, t = _randn(18, 6, seed=2) * 2, _randn(18, 6, seed=3) * 2
    labels = torch.arange(18) % 6
    got, keep = transformation_loss(s, t, labels, 4.0, ratio)
    expected, naive_rows = naive_term(s.tolist(), t.tolist(), labels.tolist(), 4.0, ratio)
    assert keep.nonzero().flatten().tolist() == naive_rows
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_transformation_term_by_hand():
    # One copy, K = 2, T = 1: teacher (0.5, 0.5) is right for label 0 (ties with the target do not count as
    # above it); student (3/4, 1/4). KL = 0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25) = 0.5 ln(4/3).
    s = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)
    t = torch.zeros(1, 2, dtype=torch.float64)
    got, keep = transformation_loss(s, t, torch.tensor([0]), 1.0, 0.0)
    assert keep.tolist() == [True] and got.item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-12)
    # T = 4 multiplies by T^2 = 16 and softens both: teacher uniform, student (3^(1/4), 1)/(3^(1/4) + 1)
    q = 3 ** 0.25 / (3 ** 0.25 + 1)
    got4, _ = transformation_loss(s, t, torch.tensor([0]), 4.0, 0.0)
    assert got4.item() == pytest.approx(16 * (0.5 * math.log(0.5 / q) + 0.5 * math.log(0.5 / (1 - q))), rel=1e-12)


@pytest.mark.parametrize("ratio", [0.75, 1.0, 0.0])
def test_similarity_term_matches_a_naive_loop(ratio):
    emb_s, emb_t = _randn(8 * 4, 5, seed=4), _randn(8 * 4, 5, seed=5)
    emb_t[4 * 2 + 1] = emb_t[4 * 2] * 2.0  # a copy the teacher matches right (rank 0), so some rows are correct
    emb_t[4 * 5 + 3] = emb_t[4 * 5] + 0.01
    sim_s, sim_t = naive_similarity(emb_s.tolist()), naive_similarity(emb_t.tolist())
    sources = [k // 3 for k in range(len(sim_s))]
    expected, naive_rows = naive_term(sim_s, sim_t, sources, 0.5, ratio)
    # copy 1 of image 2 is row 3*2 + 0, copy 3 of image 5 row 3*5 + 2: the teacher matches both right, kept
    assert _rank(sim_t[6], 2) == _rank(sim_t[17], 5) == 0 and {6, 17} <= set(naive_rows)
    got, keep = similarity_loss(copy_similarity(emb_s), copy_similarity(emb_t), 0.5, ratio)
    assert keep.nonzero().flatten().tolist() == naive_rows
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_kl_of_nothing_kept_is_zero_with_a_zero_gradient():
    s = torch.randn(3, 4, requires_grad=True)
    loss = kl_of_kept(s, torch.randn(3, 4), torch.zeros(3, dtype=torch.bool), 4.0)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(s.grad, torch.zeros_like(s))


def test_stage_rate_is_multistep_lr_stepped_per_epoch():
    # --t-lr 0.05, --t-milestones 30 45, --gamma 0.1; MultiStepLR.step() after each epoch
    rates = [stage_rate(e, 0.05, [30, 45], 0.1) for e in (1, 30, 31, 45, 46, 60)]
    assert rates == pytest.approx([0.05, 0.05, 0.005, 0.005, 0.0005, 0.0005])


@pytest.mark.parametrize("key, value", [("ratio_ss", 1.5), ("ss_temperature", 0.0), ("init_epochs", -1),
                                        ("init_milestones", [-3])])
def test_invalid_params_name_the_key(key, value):
    with pytest.raises(UserError, match=f"sskd.{key}"):
        SSKDParams(**{key: value})


def test_defaults_are_the_released_argparse_defaults():
    p = SSKDParams()
    assert (p.ce_weight, p.kd_weight, p.tf_weight, p.ss_weight) == (0.1, 0.9, 2.7, 10.0)
    assert (p.kd_temperature, p.tf_temperature, p.ss_temperature, p.ratio_tf, p.ratio_ss) == (4.0, 4.0, 0.5, 1.0, 0.75)
    assert (p.init_epochs, p.init_lr, p.init_milestones, p.init_lr_decay) == (60, 0.05, [30, 45], 0.1)


# ---- the Distiller ------------------------------------------------------------------------------------
class RotatingAugmenter:
    """Deterministic float64 views: (images - 128) / 64, and the 4 rotated copies of them (no crop, no flip)."""

    def __init__(self) -> None:
        self.normalize = Normalize([128 / 255] * 3, [64 / 255] * 3)

    def standard(self, images: Tensor) -> Tensor:
        return self.normalize(images).double()

    def rotated_views(self, images: Tensor, n_rotations: int = 4) -> Tensor:
        return self.normalize(rotate_copies(images, n_rotations)).double()

    def evaluate(self, images: Tensor) -> Tensor:
        return self.standard(images)


def _setup(init_epochs: int = 1):
    torch.manual_seed(0)
    teacher, student = create_model("resnet8", 10), create_model("resnet8", 10)
    method = SSKD(student, teacher, SSKDParams(init_epochs=init_epochs), DataInfo(num_classes=10)).double()
    method.train()  # float64 throughout, so the tiny SS values of random heads compare tightly
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (6, 3, 32, 32), generator=g, dtype=torch.uint8)
    batch = Batch(images, torch.arange(6) % 10, torch.arange(6), RotatingAugmenter())
    return method, teacher, student, batch


def test_teacher_stage_trains_only_the_teachers_head():
    method, teacher, student, batch = _setup()
    store: dict = {}
    spy_features(teacher, store, "t")
    before_t, before_s = teacher_snapshot(teacher), teacher_snapshot(student)
    out = method.forward_train(batch, 1)
    assert set(out.losses) == {"ss_init"}
    emb = method.teacher_head(store["t"].pooled).tolist()
    sim = naive_similarity(emb)
    expected = sum(-_log_softmax(row)[k // 3] for k, row in enumerate(sim)) / len(sim)
    assert out.losses["ss_init"].item() == pytest.approx(expected, rel=1e-10)
    assert store["t"].pooled.shape[0] == 24 and not store["t"].pooled.requires_grad  # 4 copies, detached
    out.total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.teacher_head.parameters())
    assert all(p.grad is None for p in method.student_head.parameters())
    assert all(p.grad is None for p in student.parameters())
    assert_teacher_untouched(teacher, before_t)
    # the student ran in eval mode: its BN statistics are untouched too, and it is back in train mode
    assert all(torch.equal(v, before_s[k]) for k, v in student.state_dict().items()) and student.training
    with torch.no_grad():
        plain = student.eval()(batch.augment.standard(batch.images))
    student.train()
    assert torch.allclose(out.logits, plain)  # training accuracy is the student's, on the unrotated copies
    assert method.stage_lr(1) == 0.05 and method.stage_lr(2) is None


def test_student_stage_terms_match_naive_loops_and_train_the_student_and_its_head():
    method, teacher, student, batch = _setup()
    store: dict = {}
    spy_features(teacher, store, "t")
    spy_features(student, store, "s")
    before_t = teacher_snapshot(teacher)
    head_before = {k: v.clone() for k, v in method.teacher_head.state_dict().items()}
    out = method.forward_train(batch, 2)
    assert set(out.losses) == {"ce", "kd", "tf", "ss"}
    s_logits, t_logits = store["s"].logits.tolist(), store["t"].logits.tolist()
    labels = batch.labels.tolist()
    plain = range(0, 24, 4)
    rotated = [r for r in range(24) if r % 4]
    ce = sum(-_log_softmax(s_logits[r])[labels[r // 4]] for r in plain) / 6
    kd = sum(_kl(s_logits[r], t_logits[r], 4.0) for r in plain) / 6
    tf, _ = naive_term([s_logits[r] for r in rotated], [t_logits[r] for r in rotated],
                       [labels[r // 4] for r in rotated], 4.0, 1.0)
    with torch.no_grad():
        sim_s = naive_similarity(method.student_head(store["s"].pooled).tolist())
        sim_t = naive_similarity(method.teacher_head(store["t"].pooled).tolist())
    ss, ss_rows = naive_term(sim_s, sim_t, [k // 3 for k in range(18)], 0.5, 0.75)
    # (Distiller.cross_entropy computes in float32 by design; the other terms stay in float64)
    for name, weight, value, rel in (("ce", 0.1, ce, 1e-6), ("kd", 0.9, kd, 1e-9), ("tf", 2.7, tf, 1e-9),
                                     ("ss", 10.0, ss, 1e-9)):
        assert out.losses[name].item() == pytest.approx(weight * value, rel=rel), name
    assert out.stats["ss_kept"].item() == pytest.approx(len(ss_rows) / 18)
    assert out.stats["tf_kept"].item() == 1.0  # ratio_tf 1.0 keeps every copy
    out.total.backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.student_head.parameters())
    assert all(p.grad is None for p in method.teacher_head.parameters())  # frozen after its stage
    assert all(torch.equal(v, head_before[k]) for k, v in method.teacher_head.state_dict().items())
    assert_teacher_untouched(teacher, before_t)
    assert method.extra_parameters() == 2 * 2 * (64 * 64 + 64)  # 2 heads of 2 Linear(64, 64) (resnet8: d = 64)


def test_epoch_schedule_uses_the_teacher_stage_rate_then_the_runs():
    from pckd.config import load_config

    method, *_ = _setup(init_epochs=3)
    method.params.init_milestones = [1]
    train = load_config(None, ["train.lr=0.01", "train.milestones=[4]", "train.epochs=5"]).train
    opt = torch.optim.SGD([{"params": list(method.parameters()), "lr": 0.01}], lr=0.01)
    schedule = EpochSchedule(opt, train, method.stage_lr)
    rates = []
    for epoch in range(1, 6):
        logged = schedule.set_epoch(epoch)
        rates.append(opt.param_groups[0]["lr"])
        assert logged == pytest.approx(rates[-1])
    # teacher stage: 0.05, then x0.1 after its milestone 1; student stage: train.lr 0.01, x0.1 after epoch 4
    assert rates == pytest.approx([0.05, 0.005, 0.005, 0.01, 0.001])
