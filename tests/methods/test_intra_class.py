"""Intra-class contrastive teacher (`intra_class`): the contrast against a naive loop, the margin gate, the
per-class FIFO queue, state round-trips and the Distiller step."""

from __future__ import annotations

import math
import random
from collections import deque

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pckd.data.batch import Batch
from pckd.data.info import DataInfo
from pckd.errors import UserError
from pckd.methods.intra_class import ClassQueue, IntraClass, IntraClassParams, intra_class_contrast, margin_gate
from pckd.models.interface import FeatureOutput


# ---- naive reference ------------------------------------------------------------------------------------
def naive_intra(h1: Tensor, h2: Tensor, labels: Tensor, qf: Tensor, ql: Tensor, tau: float) -> list[float]:
    """Explicit loops over anchors, their positive and their same-class negatives (batch, then queue)."""
    v1, v2, y = h1.double().tolist(), h2.double().tolist(), labels.tolist()
    q, qy = qf.double().tolist(), ql.tolist()
    dot = lambda a, b: sum(x * z for x, z in zip(a, b))  # noqa: E731
    out = []
    for anchor_view, other_view in ((v1, v2), (v2, v1)):
        for i in range(len(y)):
            a = anchor_view[i]
            pos = math.exp(dot(a, other_view[i]) / tau)
            neg = 0.0
            for j in range(len(y)):
                if j != i and y[j] == y[i]:
                    neg += math.exp(dot(a, v1[j]) / tau) + math.exp(dot(a, v2[j]) / tau)
            for m in range(len(qy)):
                if qy[m] == y[i]:
                    neg += math.exp(dot(a, q[m]) / tau)
            out.append(-math.log(pos / (pos + neg)))
    return out


def _unit(*shape: int, seed: int, dtype=torch.float32) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=dtype), dim=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tau", [0.5, 0.1])
def test_contrast_matches_naive_loop(dtype, tau):
    labels = torch.tensor([0, 1, 0, 2, 0, 1, 3])  # class 3: no batch partner; class 2: queue negatives only
    h1, h2 = _unit(7, 6, seed=0, dtype=dtype), _unit(7, 6, seed=1, dtype=dtype)
    qf = _unit(6, 6, seed=2, dtype=dtype)
    ql = torch.tensor([0, 2, -1, 1, 2, -1])  # -1: empty slots, must be ignored
    got = intra_class_contrast(h1, h2, labels, qf, ql, tau)
    assert got.shape == (14,) and got.dtype == dtype
    want = torch.tensor(naive_intra(h1, h2, labels, qf, ql, tau), dtype=torch.float64)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
    # class 3 (image 6) has no negatives anywhere: -log(1) = 0 for both of its anchors.
    assert got[6].item() == 0.0 and got[13].item() == 0.0


def test_contrast_with_empty_queue_and_gradients_are_finite():
    labels = torch.tensor([0, 0, 1])
    h1 = _unit(3, 4, seed=3).requires_grad_()
    h2 = _unit(3, 4, seed=4).requires_grad_()
    empty_f, empty_l = torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)
    got = intra_class_contrast(h1, h2, labels, empty_f, empty_l, 0.5)
    want = naive_intra(h1.detach(), h2.detach(), labels, empty_f, empty_l, 0.5)
    torch.testing.assert_close(got.double(), torch.tensor(want, dtype=torch.float64))
    got.sum().backward()  # masked (-inf) entries must not turn into NaN gradients
    assert torch.isfinite(h1.grad).all() and torch.isfinite(h2.grad).all()


def test_margin_gate_drops_exactly_the_low_margin_anchors():
    probs = torch.tensor(
        [
            [0.80, 0.10, 0.10],  # y=0: margin 0.70 -> pass
            [0.50, 0.40, 0.10],  # y=0: margin 0.10 -> drop
            [0.10, 0.80, 0.10],  # y=0: margin -0.70 -> drop (confidently wrong)
            [0.05, 0.05, 0.90],  # y=2: margin 0.85 -> pass
            [0.30, 0.65, 0.05],  # y=1: margin 0.35 -> drop at 0.5, pass at 0.3
        ]
    )
    labels = torch.tensor([0, 0, 0, 2, 1])
    logits = probs.log() + 3.0  # softmax is shift-invariant, so these are exactly the probabilities above
    assert margin_gate(logits, labels, 0.5).tolist() == [True, False, False, True, False]
    assert margin_gate(logits, labels, 0.3).tolist() == [True, False, False, True, True]
    assert margin_gate(logits, labels, -1.0).all()
    assert not margin_gate(logits.requires_grad_(), labels, 0.5).requires_grad


# ---- queue ----------------------------------------------------------------------------------------------
def _tagged(ids: list[int], labels: list[int]) -> tuple[Tensor, Tensor]:
    """Features [id, class] so each queue entry can be traced back to the sample that wrote it."""
    return torch.tensor([[float(i), float(c)] for i, c in zip(ids, labels)]), torch.tensor(labels)


def test_queue_is_fifo_per_class():
    q = ClassQueue(num_classes=3, size=4, dim=2)
    q.enqueue(*_tagged([0, 1, 2], [0, 1, 0]))
    assert q.ordered(0)[:, 0].tolist() == [0, 2] and q.ordered(1)[:, 0].tolist() == [1]
    assert q.fill.tolist() == [2, 1, 0] and q.ptr.tolist() == [2, 1, 0]
    # 7 more of class 0 in one batch (more than Q): only the newest 4 of all class-0 items survive, in order.
    ids, labels = list(range(10, 17)), [0] * 7
    ids.insert(3, 99), labels.insert(3, 1)
    q.enqueue(*_tagged(ids, labels))
    assert q.ordered(0)[:, 0].tolist() == [13, 14, 15, 16]
    assert q.ordered(1)[:, 0].tolist() == [1, 99]
    assert q.fill.tolist() == [4, 2, 0]
    assert q.ordered(2).shape == (0, 2)
    # One more overwrites exactly the oldest (13).
    q.enqueue(*_tagged([20], [0]))
    assert q.ordered(0)[:, 0].tolist() == [14, 15, 16, 20]
    feats, labels_ = q.negatives()
    assert sorted(feats[:, 0].tolist()) == [1, 14, 15, 16, 20, 99]
    assert (feats[:, 1] == labels_.float()).all()  # every entry sits in its own class's row


def test_queue_matches_deque_reference_on_random_batches():
    rng = random.Random(0)
    k, size = 4, 5
    q = ClassQueue(k, size, dim=2)
    ref = [deque(maxlen=size) for _ in range(k)]
    next_id = 0
    for _ in range(30):
        n = rng.randint(1, 12)
        labels = [rng.randrange(k) for _ in range(n)]
        ids = list(range(next_id, next_id + n))
        next_id += n
        q.enqueue(*_tagged(ids, labels))
        for i, c in zip(ids, labels):
            ref[c].append(i)
        for c in range(k):
            assert q.ordered(c)[:, 0].tolist() == list(ref[c])
        _, flat_l = q.slots()
        assert int((flat_l >= 0).sum()) == sum(len(r) for r in ref)


def test_queue_never_requires_grad():
    q = ClassQueue(2, 3, dim=4)
    x = torch.randn(5, 4, requires_grad=True)
    q.enqueue(x * 2, torch.tensor([0, 1, 0, 0, 1]))
    assert not q.feats.requires_grad and q.feats.grad_fn is None
    assert not any(t.requires_grad for t in q.slots())


def test_queue_state_dict_round_trip():
    q = ClassQueue(3, 4, dim=2)
    q.enqueue(*_tagged(list(range(9)), [0, 1, 0, 0, 2, 0, 0, 1, 0]))
    fresh = ClassQueue(3, 4, dim=2)
    fresh.load_state_dict(q.state_dict())
    for name in ("feats", "fill", "ptr"):
        assert torch.equal(getattr(fresh, name), getattr(q, name))
    # Both continue identically.
    for queue in (q, fresh):
        queue.enqueue(*_tagged([50, 51], [0, 2]))
    assert all(torch.equal(q.ordered(c), fresh.ordered(c)) for c in range(3))


# ---- distiller ------------------------------------------------------------------------------------------
class FakeAugmenter:
    """Stands in for the data layer: a float view with a little random noise per call (so views differ)."""

    def standard(self, images: Tensor) -> Tensor:
        return images.float() / 255 + 0.05 * torch.randn(images.shape)

    def another_view(self, images: Tensor) -> Tensor:
        return self.standard(images)


class FakeModel(nn.Module):
    def __init__(self, num_classes: int = 4, dim: int = 8) -> None:
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


def _batch(seed: int, b: int = 8, k: int = 4) -> Batch:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (b, 3, 6, 6), generator=g, dtype=torch.uint8)
    return Batch(images=images, labels=torch.arange(b) % k, index=torch.arange(b), augment=FakeAugmenter())


def _method(**kw) -> IntraClass:
    torch.manual_seed(0)
    return IntraClass(FakeModel(), None, IntraClassParams(**kw), DataInfo(num_classes=4))


def test_params_validation_names_the_key():
    with pytest.raises(UserError, match=r"intra_class\.margin"):
        IntraClassParams(margin="soft")
    with pytest.raises(UserError, match=r"intra_class\.tau"):
        IntraClassParams(tau=-1.0)
    with pytest.raises(UserError, match=r"intra_class\.queue_size"):
        IntraClassParams(queue_size=-2)
    assert not IntraClass.needs_teacher


def test_distiller_step_losses_stats_and_backward():
    method = _method(margin="none", queue_size=3)
    assert method.teacher is None
    out = method(_batch(0), epoch=1)
    assert set(out.losses) == {"ce", "intra"} and set(out.stats) == {"gate_pass_fraction", "queue_fill"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in out.losses.values())
    assert out.losses["intra"].item() > 0  # 2 images per class: every anchor has batch negatives
    assert out.stats["gate_pass_fraction"].item() == 1.0
    assert out.stats["queue_fill"].item() == pytest.approx(2 / 3)  # one view of 2 images per class, Q = 3
    assert out.logits.shape == (8, 4)
    out.total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in method.student.parameters())
    assert not method.queue.feats.requires_grad
    # Second step uses the queue (a snapshot in the graph) and then updates it; backward must still work.
    out = method(_batch(1), epoch=1)
    out.total.backward()
    assert method.queue.fill.tolist() == [3, 3, 3, 3]


def test_distiller_loss_equals_formula_on_the_same_views():
    method = _method(margin="none", contrast_weight=0.7, ce_weight=0.4)
    method.queue.enqueue(F.normalize(torch.randn(6, 8), dim=1), torch.tensor([0, 1, 2, 3, 0, 1]))
    qf, ql = method.queue.slots()
    qf, ql = qf.clone(), ql.clone()
    batch = _batch(3)
    torch.manual_seed(9)
    out = method(batch, epoch=1)
    torch.manual_seed(9)
    x1, x2 = batch.augment.standard(batch.images), batch.augment.standard(batch.images)
    with torch.no_grad():
        f = method.student.forward_features(torch.cat([x1, x2]))
        h = F.normalize(f.pooled, dim=1)
        per = torch.tensor(naive_intra(h[:8], h[8:], batch.labels, qf, ql, 0.5))
        ce = 0.5 * (F.cross_entropy(f.logits[:8], batch.labels) + F.cross_entropy(f.logits[8:], batch.labels))
    assert out.losses["intra"].item() == pytest.approx(0.7 * per.mean().item(), rel=1e-5)
    assert out.losses["ce"].item() == pytest.approx(0.4 * ce.item(), rel=1e-5)


def test_gate_with_no_passing_anchor_gives_zero_not_nan():
    method = _method(margin="gate", delta=0.99)  # an untrained 4-class model is never this confident
    out = method(_batch(0), epoch=1)
    assert out.stats["gate_pass_fraction"].item() == 0.0
    assert out.losses["intra"].item() == 0.0
    out.total.backward()
    assert all(torch.isfinite(p.grad).all() for p in method.student.parameters())


def test_gated_mean_uses_only_passing_anchors():
    method = _method(margin="gate", delta=0.0)
    batch = _batch(4)
    torch.manual_seed(2)
    out = method(batch, epoch=1)
    torch.manual_seed(2)
    x = torch.cat([batch.augment.standard(batch.images), batch.augment.standard(batch.images)])
    with torch.no_grad():
        f = method.student.forward_features(x)
        h = F.normalize(f.pooled, dim=1)
        empty_f, empty_l = torch.zeros(0, 8), torch.zeros(0, dtype=torch.long)
        per = intra_class_contrast(h[:8], h[8:], batch.labels, empty_f, empty_l, 0.5)
        gate = torch.cat([margin_gate(f.logits[:8], batch.labels, 0.0), margin_gate(f.logits[8:], batch.labels, 0.0)])
    assert 0 < int(gate.sum()) < 16, "the seed should give a mixed gate"
    assert out.stats["gate_pass_fraction"].item() == pytest.approx(gate.float().mean().item())
    assert out.losses["intra"].item() == pytest.approx(0.1 * per[gate].mean().item(), rel=1e-5)


def test_method_state_round_trip_restores_the_queue_exactly():
    method = _method(queue_size=3)
    for seed in range(3):
        method(_batch(seed), epoch=1)
    state = method.method_state()
    saved = {k: v.clone() for k, v in state["queue"].items()}
    method(_batch(7), epoch=1)  # later steps must not alter the snapshot
    assert all(torch.equal(state["queue"][k], saved[k]) for k in saved)

    restored = _method(queue_size=3)
    restored.load_method_state(state)
    for k in ("feats", "fill", "ptr"):
        assert torch.equal(getattr(restored.queue, k), saved[k])
    with pytest.raises(UserError, match=r"intra_class\.queue_size"):
        _method(queue_size=5).load_method_state(state)


def test_queue_follows_module_dtype_moves_and_stays_out_of_state_dict():
    method = _method()
    assert not any(k.startswith("queue") for k in method.state_dict())  # checkpointed via method_state()
    method.double()
    assert method.queue.feats.dtype == torch.float64 and method.queue.fill.dtype == torch.long
