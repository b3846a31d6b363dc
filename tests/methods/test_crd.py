"""Contrastive representation distillation (`crd`): NCE, memory update and sampling against naive loops; the
fixed normaliser Z; the Distiller with tiny zoo models; RNG-exact repeatability."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import Tensor

from pckd.data.batch import Batch
from pckd.data.info import DataInfo
from pckd.errors import UserError
from pckd.methods.crd import (
    CRD,
    CRDParams,
    contrast_exp,
    draw_contrast_index,
    momentum_update_,
    nce_loss,
    normalisation_constant,
)
from pckd.models import create_model
from pckd.models.interface import FeatureOutput
from tests.methods.scaffold import (
    NormalisingAugmenter,
    assert_grads_reach,
    assert_teacher_untouched,
    make_batch,
    teacher_snapshot,
)

N_DATA = 64
NUM_CLASSES = 10


# ---- naive references (explicit loops over samples and contrast entries) ---------------------------------
def naive_exp_scores(anchor: list[list[float]], memory: list[list[float]], idx: list[list[int]], T: float):
    return [[math.exp(sum(a * m for a, m in zip(anchor[b], memory[j])) / T) for j in idx[b]] for b in range(len(idx))]


def naive_nce(probs: list[list[float]], n_data: int, eps: float = 1e-7) -> float:
    m = len(probs[0]) - 1
    noise = m / n_data
    total = 0.0
    for row in probs:
        total += math.log(row[0] / (row[0] + noise + eps))
        for p in row[1:]:
            total += math.log(noise / (p + noise + eps))
    return -total / len(probs)


def _unit_rows(n: int, d: int, g: torch.Generator, dtype: torch.dtype) -> Tensor:
    x = torch.randn(n, d, generator=g, dtype=dtype)
    return x / x.norm(dim=1, keepdim=True)


# ---- pure functions ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("T", [0.07, 0.5])
def test_nce_of_bank_scores_matches_naive_loop(dtype, T):
    g = torch.Generator().manual_seed(1)
    n, d, b, k = 12, 5, 3, 6
    memory, anchor = _unit_rows(n, d, g, dtype), _unit_rows(b, d, g, dtype)
    idx = torch.randint(0, n, (b, k + 1), generator=g)
    exp_scores = contrast_exp(anchor, memory, idx, T)
    want = naive_exp_scores(anchor.double().tolist(), memory.double().tolist(), idx.tolist(), T)
    assert exp_scores.dtype == dtype
    torch.testing.assert_close(exp_scores.double(), torch.tensor(want, dtype=torch.float64), rtol=1e-5, atol=0.0)

    z = normalisation_constant(exp_scores, n)
    z_naive = n * sum(sum(r) for r in want) / (b * (k + 1))
    assert z.item() == pytest.approx(z_naive, rel=1e-5)
    got = nce_loss(exp_scores / z, n)
    assert got.dim() == 0
    assert got.item() == pytest.approx(naive_nce([[v / z_naive for v in r] for r in want], n), rel=1e-5)


def test_nce_hand_value():
    # m = 1, n_data = 2 -> noise m*Pn = 0.5: -(log(1/1.5) + log(0.5/0.5)) = log 1.5 (eps is negligible)
    assert nce_loss(torch.tensor([[1.0, 0.0]], dtype=torch.float64), 2).item() == pytest.approx(math.log(1.5), rel=1e-6)


def test_nce_gradient_reaches_the_anchor_only():
    g = torch.Generator().manual_seed(2)
    memory = _unit_rows(8, 4, g, torch.float32)
    anchor = _unit_rows(2, 4, g, torch.float32).requires_grad_()
    idx = torch.tensor([[0, 3, 5], [1, 2, 7]])
    nce_loss(contrast_exp(anchor, memory, idx, 0.1) / 3.0, 8).backward()
    assert anchor.grad is not None and torch.isfinite(anchor.grad).all() and anchor.grad.abs().sum() > 0
    assert memory.grad is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_momentum_update_and_normalisation(dtype):
    g = torch.Generator().manual_seed(3)
    memory = torch.randn(6, 3, generator=g, dtype=dtype)
    before = memory.clone()
    index = torch.tensor([4, 1])
    v = torch.randn(2, 3, generator=g, dtype=dtype)
    momentum_update_(memory, index, v, 0.5)
    for r, i in enumerate(index.tolist()):
        mixed = [0.5 * a + 0.5 * c for a, c in zip(before[i].tolist(), v[r].tolist())]
        norm = math.sqrt(sum(x * x for x in mixed))
        assert memory[i].tolist() == pytest.approx([x / norm for x in mixed], rel=1e-6)
    untouched = [i for i in range(6) if i not in index.tolist()]
    assert torch.equal(memory[untouched], before[untouched])


def test_other_class_negatives_are_distinct_other_class_samples():
    torch.manual_seed(0)
    bank_labels = torch.arange(40) % 4
    index = torch.tensor([0, 5, 22])
    labels = bank_labels[index]
    idx = draw_contrast_index(index, labels, bank_labels, 40, 20, "other_class")
    assert idx.shape == (3, 21) and torch.equal(idx[:, 0], index)
    for b in range(3):
        neg = idx[b, 1:].tolist()
        assert len(set(neg)) == 20  # without replacement (30 eligible >= 20)
        assert all(bank_labels[j] != labels[b] for j in neg)


def test_other_class_unknown_labels_count_as_other_and_shortage_takes_every_eligible():
    torch.manual_seed(0)
    bank_labels = torch.tensor([0, 0, 1, -1, 0, 1])  # anchor 0 (class 0): eligible {2, 3, 5}
    idx = draw_contrast_index(torch.tensor([0]), torch.tensor([0]), bank_labels, 6, 7, "other_class")
    neg = idx[0, 1:].tolist()
    assert len(neg) == 7 and set(neg[:3]) == {2, 3, 5} and set(neg) == {2, 3, 5}


def test_other_class_draws_cover_the_eligible_set_uniformly():
    torch.manual_seed(0)
    bank_labels = torch.tensor([0, 1, 1, 2, 2, 2, 0, 3])  # anchor 0: eligible {1, 2, 3, 4, 5, 7}
    counts = torch.zeros(8)
    for _ in range(300):
        idx = draw_contrast_index(torch.tensor([0]), torch.tensor([0]), bank_labels, 8, 2, "other_class")
        counts += torch.bincount(idx[0, 1:], minlength=8)
    assert counts[0] == 0 and counts[6] == 0
    assert counts[[1, 2, 3, 4, 5, 7]].min() > 60  # expectation 100 each


def test_uniform_negatives_skip_only_the_anchor():
    torch.manual_seed(0)
    index = torch.tensor([0, 3, 9])
    idx = draw_contrast_index(index, torch.zeros(3, dtype=torch.long), None, 10, 400, "uniform")
    assert torch.equal(idx[:, 0], index)
    for b, i in enumerate(index.tolist()):
        seen = set(idx[b, 1:].tolist())
        assert i not in seen and seen == set(range(10)) - {i}


def test_other_class_replace_negatives_are_other_class_samples_with_replacement():
    torch.manual_seed(0)
    bank_labels = torch.tensor([0, 1, 1, 2, 2, 2, 0, 3, -1])  # anchor 0 (class 0): eligible {1, 2, 3, 4, 5, 7, 8}
    idx = draw_contrast_index(torch.tensor([0, 3]), torch.tensor([0, 2]), bank_labels, 9, 500, "other_class_replace")
    assert idx.shape == (2, 501) and idx[:, 0].tolist() == [0, 3]
    assert set(idx[0, 1:].tolist()) == {1, 2, 3, 4, 5, 7, 8}  # 500 draws from 7: repeats, every eligible one hit
    assert set(idx[1, 1:].tolist()) == {0, 1, 2, 6, 7, 8}  # anchor 3 (class 2): not 3, 4, 5


def test_other_class_replace_draws_are_uniform_over_the_eligible_set():
    torch.manual_seed(1)
    bank_labels = torch.tensor([0, 1, 1, 2, 2, 2, 0, 3])  # anchor 0: eligible {1, 2, 3, 4, 5, 7}
    idx = draw_contrast_index(torch.tensor([0]), torch.tensor([0]), bank_labels, 8, 6000, "other_class_replace")
    counts = torch.bincount(idx[0, 1:], minlength=8).double()
    assert counts[0] == 0 and counts[6] == 0
    # uniform over 6 samples: 1000 each; chi-square with 5 degrees of freedom, 0.1% critical value 20.5
    chi2 = float(((counts[[1, 2, 3, 4, 5, 7]] - 1000) ** 2 / 1000).sum())
    assert chi2 < 20.5


def test_other_class_replace_stops_on_a_one_class_bank():
    torch.manual_seed(0)
    idx = draw_contrast_index(torch.tensor([0]), torch.tensor([0]), torch.zeros(5, dtype=torch.long), 5, 8,
                              "other_class_replace")
    assert idx.shape == (1, 9) and set(idx[0].tolist()) <= set(range(5))  # no eligible sample: blocked ones, no hang


def test_other_class_replace_needs_no_bank_sized_tensor():
    # 200k-sample bank, 1000 classes: the draw touches B * k entries, never a [B, N] tensor
    torch.manual_seed(0)
    n, b, k = 200_000, 8, 4096
    bank_labels = torch.arange(n) % 1000
    index = torch.randint(0, n, (b,))
    idx = draw_contrast_index(index, bank_labels[index], bank_labels, n, k, "other_class_replace")
    assert idx.shape == (b, k + 1)
    assert (bank_labels[idx[:, 1:]] != bank_labels[index][:, None]).all()


def test_other_class_replace_step():
    d = make(negatives="other_class_replace")
    out = d.forward_train(make_batch(4, NUM_CLASSES, 7, index=torch.tensor([0, 1, 2, 3])), 1)
    assert set(out.losses) == {"ce", "crd"} and torch.isfinite(out.total)
    assert (d.bank_labels[:4] >= 0).all()  # the batch's labels entered the bank before the draw


# ---- the Distiller -------------------------------------------------------------------------------------------
def make(teacher: str = "resnet8x4", student: str = "resnet8", **params) -> CRD:
    torch.manual_seed(0)
    t, s = create_model(teacher, NUM_CLASSES), create_model(student, NUM_CLASSES)
    d = CRD(s, t, CRDParams(nce_k=16, **params), DataInfo(num_classes=NUM_CLASSES, train_size=N_DATA))
    d.train()
    return d


def test_bank_initialisation_range_and_buffers():
    d = make()
    stdv = 1.0 / math.sqrt(128 / 3)
    for bank in (d.memory_s, d.memory_t):
        assert bank.shape == (N_DATA, 128) and bank.abs().max() <= stdv and bank.abs().max() > 0.9 * stdv
    assert {"memory_s", "memory_t", "z", "bank_labels"} <= set(d.state_dict())
    assert d.z.tolist() == [-1.0, -1.0]


@pytest.mark.parametrize("kd_weight", [0.0, 1.0])
def test_forward_train_step(kd_weight):
    d = make(kd_weight=kd_weight)
    teacher_state = teacher_snapshot(d.teacher)
    banks = d.memory_s.clone(), d.memory_t.clone()
    index = torch.tensor([3, 17, 40, 63])
    batch = make_batch(4, NUM_CLASSES, 0, index=index)
    out = d.forward_train(batch, 1)
    assert set(out.losses) == ({"ce", "crd", "kd"} if kd_weight else {"ce", "crd"})
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.losses.values())
    assert out.logits.shape == (4, NUM_CLASSES)
    out.total.backward()

    assert_grads_reach(d.student, finite=True)
    for head in (d.embed_s, d.embed_t):
        assert_grads_reach(head, nonzero=True)
    assert_teacher_untouched(d.teacher, teacher_state)

    # banks: rows of the batch moved and are unit vectors, the others untouched; labels recorded; Z set
    others = [i for i in range(N_DATA) if i not in index.tolist()]
    for bank, old in zip((d.memory_s, d.memory_t), banks):
        assert not torch.equal(bank[index], old[index])
        torch.testing.assert_close(bank[index].norm(dim=1), torch.ones(4))
        assert torch.equal(bank[others], old[others])
    assert torch.equal(d.bank_labels[index], batch.labels)
    assert (d.bank_labels[others] == -1).all()
    assert (d.z > 0).all()
    torch.testing.assert_close(torch.stack([out.stats["z_s"], out.stats["z_t"]]), d.z)


def test_step_loss_equals_naive_formula_on_the_old_banks():
    """Replays the step's RNG: student anchors score against the teacher bank and vice versa, Z from batch 1."""
    d = make(crd_weight=0.8)
    banks = d.memory_s.clone(), d.memory_t.clone()
    batch = make_batch(4, NUM_CLASSES, 2, index=torch.tensor([5, 6, 30, 31]))
    rng = torch.get_rng_state()
    out = d.forward_train(batch, 1)

    torch.set_rng_state(rng)
    x = batch.augment.standard(batch.images)
    with torch.no_grad():
        v_s = d.embed_s(d.student.forward_features(x).pooled).double().tolist()
        v_t = d.embed_t(d.teacher.forward_features(x).pooled).double().tolist()
    labels_before = torch.full((N_DATA,), -1, dtype=torch.long)
    labels_before[batch.index] = batch.labels
    idx = draw_contrast_index(batch.index, batch.labels, labels_before, N_DATA, 16, "other_class").tolist()
    exp_s = naive_exp_scores(v_s, banks[1].double().tolist(), idx, 0.07)
    exp_t = naive_exp_scores(v_t, banks[0].double().tolist(), idx, 0.07)
    z_s = N_DATA * sum(map(sum, exp_s)) / (4 * 17)
    z_t = N_DATA * sum(map(sum, exp_t)) / (4 * 17)
    assert d.z.tolist() == pytest.approx([z_s, z_t], rel=1e-4)
    want = (naive_nce([[v / z_s for v in r] for r in exp_s], N_DATA)
            + naive_nce([[v / z_t for v in r] for r in exp_t], N_DATA))
    assert out.losses["crd"].item() == pytest.approx(0.8 * want, rel=1e-4)


def test_z_is_estimated_once_then_fixed():
    d = make()
    g = torch.Generator().manual_seed(4)
    first = torch.rand(4, 17, generator=g, dtype=torch.float64) + 1.0
    z_s, z_t = d._normalisers(first, 2 * first)
    assert z_s.item() == pytest.approx(N_DATA * first.mean().item(), rel=1e-6)
    assert z_t.item() == pytest.approx(2 * N_DATA * first.mean().item(), rel=1e-6)
    again = d._normalisers(first * 10, first * 10)
    assert [t.item() for t in again] == [z_s.item(), z_t.item()]
    # a training step no longer changes it
    before = d.z.clone()
    d.forward_train(make_batch(4, NUM_CLASSES, 1, index=torch.tensor([0, 1, 2, 3])), 1)
    assert torch.equal(d.z, before)
    # loading a state with Z unset makes the next call estimate again
    state = d.state_dict()
    state["z"] = torch.full((2,), -1.0)
    d.load_state_dict(state)
    z_s2, _ = d._normalisers(first * 3, first)
    assert z_s2.item() == pytest.approx(3 * N_DATA * first.mean().item(), rel=1e-6)


def test_same_rng_state_gives_identical_steps():
    d = make()
    # Z set, some labels known
    d.forward_train(make_batch(4, NUM_CLASSES, 5, index=torch.tensor([8, 9, 10, 11])), 1)
    saved_module, saved_rng = copy.deepcopy(d.state_dict()), torch.get_rng_state()
    batch = make_batch(4, NUM_CLASSES, 6, index=torch.tensor([20, 21, 50, 2]))
    first = d.forward_train(batch, 1)
    banks = d.memory_s.clone(), d.memory_t.clone()
    d.load_state_dict(saved_module)
    torch.set_rng_state(saved_rng)
    second = d.forward_train(batch, 1)
    for name in first.losses:
        assert torch.equal(first.losses[name], second.losses[name]), name
    assert torch.equal(d.memory_s, banks[0]) and torch.equal(d.memory_t, banks[1])


def test_uniform_negatives_step_and_different_shapes():
    d = make(teacher="resnet8", student="wrn_16_1", negatives="uniform")
    out = d.forward_train(make_batch(4, NUM_CLASSES, 7, index=torch.tensor([0, 1, 2, 3])), 1)
    assert set(out.losses) == {"ce", "crd"} and torch.isfinite(out.total)
    assert (d.bank_labels == -1).all()  # uniform negatives need no labels


def test_train_labels_fill_the_label_bank():
    torch.manual_seed(0)
    t, s = create_model("resnet8", NUM_CLASSES), create_model("resnet8", NUM_CLASSES)
    labels = torch.arange(N_DATA) % NUM_CLASSES
    d = CRD(s, t, CRDParams(nce_k=8), DataInfo(num_classes=NUM_CLASSES, train_size=N_DATA, train_labels=labels))
    assert torch.equal(d.bank_labels, labels)
    with pytest.raises(UserError, match="train_labels"):
        CRD(s, t, CRDParams(nce_k=8), DataInfo(num_classes=NUM_CLASSES, train_size=N_DATA, train_labels=labels[:5]))


@pytest.mark.parametrize(
    ("overrides", "key"),
    [({"negatives": "random"}, "crd.negatives"), ({"nce_k": 0}, "crd.nce_k"), ({"nce_t": 0.0}, "crd.nce_t"),
     ({"nce_mom": 1.0}, "crd.nce_mom"), ({"crd_weight": -1.0}, "crd.crd_weight"), ({"feat_dim": 0}, "crd.feat_dim")],
)
def test_params_validation_names_the_key(overrides, key):
    with pytest.raises(UserError, match=key):
        CRDParams(**overrides)


# ---- DDP: 2 gloo ranks with 2 samples each reproduce one process with the 4-sample batch -----------------
class FakeModel(torch.nn.Module):
    """Conv + ReLU + mean pool + linear, no BatchNorm: per-rank features equal the single-process ones."""

    input_size = 8

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, dim, 3, padding=1), torch.nn.ReLU())
        self.fc = torch.nn.Linear(dim, NUM_CLASSES)

    def forward_features(self, x: Tensor) -> FeatureOutput:
        fmap = self.body(x)
        pooled = fmap.mean(dim=(2, 3))
        return FeatureOutput(stages=[fmap], pooled=pooled, logits=self.fc(pooled))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x).logits


def _ddp_setup() -> tuple[CRD, Batch]:
    torch.manual_seed(0)
    method = CRD(FakeModel(6), FakeModel(5), CRDParams(nce_k=12, feat_dim=8), DataInfo(num_classes=NUM_CLASSES, train_size=N_DATA))
    g = torch.Generator().manual_seed(9)
    images = torch.randint(0, 256, (4, 3, 8, 8), generator=g, dtype=torch.uint8)
    batch = Batch(images, torch.tensor([1, 2, 1, 3]), torch.tensor([7, 40, 12, 3]), NormalisingAugmenter())
    return method, batch


def _ddp_worker(rank: int, world: int, init_file: str, result_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        method, full = _ddp_setup()
        shard = slice(2 * rank, 2 * rank + 2)
        wrapped = DDP(method, find_unused_parameters=True)
        out = wrapped(Batch(full.images[shard], full.labels[shard], full.index[shard], full.augment), epoch=1)
        torch.save({"crd": out.losses["crd"].detach(), "memory_s": method.memory_s, "memory_t": method.memory_t,
                    "z": method.z, "bank_labels": method.bank_labels, "rng": torch.get_rng_state()},
                   f"{result_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_matches_single_process(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    method, batch = _ddp_setup()
    out = method(batch, epoch=1)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    # the mean of the two ranks' local means is the mean over the global batch
    assert (ranks[0]["crd"] + ranks[1]["crd"]).item() / 2 == pytest.approx(out.losses["crd"].item(), rel=1e-5)
    for r in ranks:
        for key in ("memory_s", "memory_t", "z"):
            torch.testing.assert_close(r[key], getattr(method, key), rtol=1e-5, atol=1e-6)
        assert torch.equal(r["bank_labels"], method.bank_labels)
        assert torch.equal(r["rng"], torch.get_rng_state())
