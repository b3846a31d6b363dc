"""The PCKD Distiller with tiny fake models and a deterministic fake augmenter."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import pckd.methods.pckd as P
import pckd.methods.pckd.distiller
from pckd.data.batch import Batch
from pckd.data.info import DataInfo
from pckd.models.interface import FeatureOutput

K = 5
B = 6


class TinyNet(nn.Module):
    """Flatten -> Linear -> ReLU (penultimate) -> Linear classifier; rotation-sensitive on purpose."""

    def __init__(self, d: int, bias: bool = True, scale: float = 4.0) -> None:
        super().__init__()
        self.d = d
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, d), nn.ReLU())
        self.fc = nn.Linear(d, K, bias=bias)
        with torch.no_grad():
            self.fc.weight.mul_(scale)  # spread the per-sample CE so some samples are "hard" at epoch 1
        self.forward_calls = 0

    def forward_features(self, x: torch.Tensor) -> FeatureOutput:
        self.forward_calls += 1
        f = self.body(x)
        return FeatureOutput([f], f, self.fc(f))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).logits

    @property
    def classifier_layer(self) -> nn.Linear:
        return self.fc

    @property
    def penultimate_dim(self) -> int:
        return self.d


class FakeAugmenter:
    """Deterministic: rotations only, flat index n*i + j."""

    def standard(self, images: torch.Tensor) -> torch.Tensor:
        return images.float()

    def rotated_views(self, images: torch.Tensor, n_rotations: int = 4) -> torch.Tensor:
        x = images.float()
        views = torch.stack([torch.rot90(x, j, dims=(2, 3)) for j in range(n_rotations)], dim=1)
        return views.reshape(-1, *x.shape[1:])

    def evaluate(self, images: torch.Tensor) -> torch.Tensor:
        return images.float()


class FakeWriter:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.histograms: dict[str, torch.Tensor] = {}
        self.scalars: dict[str, float] = {}
        self.written: list[str] = []

    def scalar(self, name: str, value: float, epoch: int) -> None:
        self.scalars[name] = value

    def histogram(self, name: str, values: torch.Tensor, epoch: int) -> None:
        self.histograms[name] = values

    def write_text(self, name: str, text: str) -> None:
        self.written.append(name)
        (self.run_dir / name).write_text(text)


def make_batch(seed: int = 0, index: torch.Tensor | None = None) -> Batch:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(B, 3, 4, 4, generator=g)
    labels = torch.randint(0, K, (B,), generator=g)
    idx = torch.arange(B) if index is None else index
    return Batch(images=images, labels=labels, index=idx, augment=FakeAugmenter())


def make(d_s: int = 6, d_t: int = 6, seed: int = 0, **overrides) -> P.PCKD:
    torch.manual_seed(seed)
    preview = overrides.pop("preview", {})
    params = P.PCKDParams(mlp_hidden_mult=2, preview=P.PreviewParams(**preview), **overrides)
    student, teacher = TinyNet(d_s), TinyNet(d_t)
    distiller = P.PCKD(student, teacher, params, DataInfo(num_classes=K))
    distiller.train()
    return distiller


def student_grads(d: P.PCKD) -> list[torch.Tensor]:
    return [p.grad.clone() for p in d.student.parameters()]


def test_forward_train_gives_finite_named_losses_and_stats():
    d = make()
    batch = make_batch()
    out = d.forward_train(batch, 1)
    assert set(out.losses) == {"ce", "kd", "ccc", "fa", "ca"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.losses.values())
    assert set(out.stats) == {"threshold", "hard_fraction", "weight_mean", "weight_min"}
    assert all(v.dim() == 0 for v in out.stats.values())
    assert out.stats["threshold"].item() == pytest.approx(1.005)
    # logits are the student's on the unrotated copies, one forward on all 4B images
    assert d.student.forward_calls == 1 and d.teacher.forward_calls == 1
    torch.testing.assert_close(out.logits, d.student(batch.images.float()))
    assert torch.isfinite(out.total)


@pytest.mark.parametrize(
    "overrides",
    [
        {"ccc": "centers"},
        {"preview": {"mode": "off"}},
        {"preview": {"mode": "curriculum"}},
        {"preview": {"mode": "focal"}},
        {"preview": {"on_ce": True, "detach": False}},
    ],
)
def test_variants_run_and_backpropagate(overrides):
    d = make(**overrides)
    out = d.forward_train(make_batch(), 3)
    assert all(torch.isfinite(v) for v in out.losses.values())
    out.total.backward()
    assert all(p.grad is not None for p in d.parameters() if p.requires_grad)


def test_no_gradient_reaches_the_teacher():
    d = make()
    d.teacher.requires_grad_(True)  # even if someone re-enables it, the method must detach everything teacher
    out = d.forward_train(make_batch(), 1)
    out.total.backward()
    assert all(p.grad is None for p in d.teacher.parameters())
    assert all(p.grad is not None for p in d.student.parameters())


def _grads_with_and_without_constant_weights(detach: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    d = make(preview={"detach": detach})
    batch = make_batch(seed=3)
    captured: list[torch.Tensor] = []
    original = d.weighting.weights

    def spy(*args, **kwargs):
        w = original(*args, **kwargs)
        captured.append(w)
        return w

    d.weighting.weights = spy  # type: ignore[method-assign]
    d.forward_train(batch, 1).total.backward()
    live = student_grads(d)
    w = captured[0].detach().clone()
    assert (w < 1).any(), "the test needs at least one hard sample"
    d.zero_grad()
    d.weighting.weights = lambda *args, **kwargs: w  # type: ignore[method-assign]
    d.forward_train(batch, 1).total.backward()
    return live, student_grads(d)


def test_detached_weights_carry_no_gradient():
    live, const = _grads_with_and_without_constant_weights(detach=True)
    for a, b in zip(live, const):
        torch.testing.assert_close(a, b)


def test_undetached_kd_weight_carries_gradient():
    live, const = _grads_with_and_without_constant_weights(detach=False)
    assert any(not torch.allclose(a, b) for a, b in zip(live, const))


def test_centre_alignment_skipped_with_one_warning_when_shapes_differ():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d = make(d_s=6, d_t=8)  # like wrn_40_2 (128) -> wrn_40_1 (64)
        outs = [d.forward_train(make_batch(seed=s), 1) for s in range(2)]
    ca_warnings = [w for w in caught if "centre alignment" in str(w.message)]
    assert len(ca_warnings) == 1
    assert "(5, 7)" in str(ca_warnings[0].message) and "(5, 9)" in str(ca_warnings[0].message)
    assert all("ca" not in out.losses for out in outs)
    assert {"ce", "kd", "ccc", "fa"} <= set(outs[0].losses)


def test_heads_counted_as_extra_parameters():
    with pytest.warns(UserWarning, match="centre alignment"):
        d = make(d_s=6, d_t=8)
    hidden = 2 * 8
    fa = (6 * hidden + hidden) + 2 * hidden + (hidden * 8 + 8)
    embeds = (6 * 6 + 6) + (6 * 8 + 8)
    assert d.extra_parameters() == fa + embeds
    assert make(fa_weight=0, ccc_weight=0).extra_parameters() == 0


@pytest.mark.parametrize("name", ["ce", "kd", "ccc", "fa", "ca"])
def test_zero_weight_removes_the_term(name):
    d = make(**{f"{name}_weight": 0.0})
    out = d.forward_train(make_batch(), 1)
    assert name not in out.losses
    assert len(out.losses) == 4


def test_teacher_forward_skipped_when_no_term_needs_it():
    d = make(kd_weight=0.0, fa_weight=0.0)
    out = d.forward_train(make_batch(), 1)
    assert d.teacher.forward_calls == 0
    assert set(out.losses) == {"ce", "ccc", "ca"}


def test_batch_mean_ce_comes_from_global_mean(monkeypatch):
    calls = []

    def fake_global_mean(x):
        calls.append(x.numel())
        return x.mean() * 2  # pretend the other ranks had twice the CE

    monkeypatch.setattr(pckd.methods.pckd.distiller, "global_mean", fake_global_mean)
    d = make()
    d.forward_train(make_batch(), 1)
    assert calls == [B]
    s = d.records.steps["difficulty"][-1]
    assert s.mean().item() == pytest.approx(0.5, rel=1e-5)


def _run_epoch(d: P.PCKD, epoch: int, n_batches: int = 3) -> None:
    d.on_epoch_start(epoch)
    perm = torch.randperm(n_batches * B, generator=torch.Generator().manual_seed(epoch)) + 100
    for step in range(n_batches):
        d.forward_train(make_batch(seed=10 * epoch + step, index=perm[step * B:(step + 1) * B]), epoch)


def test_on_epoch_end_writes_records_and_history(tmp_path):
    d = make()
    _run_epoch(d, 1)
    writer = FakeWriter(tmp_path)
    d.on_epoch_end(1, writer)

    with open(tmp_path / "preview_records.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["index", "label", "difficulty", "weight"]
    assert [int(r["index"]) for r in rows] == list(range(100, 100 + 3 * B))
    weights = [float(r["weight"]) for r in rows]
    assert all(0 <= w <= 1 for w in weights) and min(weights) < 1
    assert writer.written == ["preview_records.csv", "preview_history.json"] == list(P.PCKD.output_files)
    assert not (tmp_path / "preview_weights.png").exists()  # drawn by `pckd report`, never during training
    assert set(writer.histograms) == {"pckd/difficulty", "pckd/weight"}
    assert writer.histograms["pckd/weight"].numel() == 3 * B

    history = json.loads((tmp_path / "preview_history.json").read_text())
    assert len(history["probe_indices"]) == 16 and history["probe_groups"].count("hard") == 8
    assert [e["epoch"] for e in history["epochs"]] == [1]
    assert d.records.steps["index"] == []  # cleared for the next epoch

    # resume: a fresh distiller continues the history
    d2 = make()
    d2.load_method_state(d.method_state())
    _run_epoch(d2, 2)
    d2.on_epoch_end(2, writer)
    history = json.loads((tmp_path / "preview_history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2]
    assert history["probe_indices"] == d.history["probe_indices"]
    with open(tmp_path / "preview_records.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 3 * B  # overwritten by the last epoch


def test_on_epoch_end_without_a_writer_keeps_the_history():
    d = make()
    _run_epoch(d, 1)
    d.on_epoch_end(1)  # a user's own loop: no run folder
    assert [e["epoch"] for e in d.history["epochs"]] == [1]


def test_method_state_is_plain_python(tmp_path):
    d = make()
    _run_epoch(d, 1, n_batches=1)
    d.on_epoch_end(1, FakeWriter(tmp_path))
    state = d.method_state()
    assert json.loads(json.dumps(state)) == state
    assert len(state["preview_history"]["epochs"]) == 1


def test_table_vii_ce_only_preview_on_ce_needs_no_teacher():
    from pckd.errors import UserError

    params = P.PCKDParams(kd_weight=0, ccc_weight=0, fa_weight=0, ca_weight=0, n_rotations=1,
                          preview=P.PreviewParams(on_ce=True))
    d = P.PCKD(TinyNet(6), None, params, DataInfo(num_classes=K)).train()
    batch = make_batch()
    out = d.forward_train(batch, 1)
    assert set(out.losses) == {"ce"}
    ce_i = torch.nn.functional.cross_entropy(out.logits, batch.labels, reduction="none")
    w = P.preview_weights(ce_i.detach(), 1, params.gamma)
    assert (w < 1).any()
    torch.testing.assert_close(out.losses["ce"], (w * ce_i).sum() / B)
    with pytest.raises(UserError, match="pckd.kd_weight"):
        P.PCKD(TinyNet(6), None, P.PCKDParams(), DataInfo(num_classes=K))
