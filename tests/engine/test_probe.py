"""`pckd probe`: the linear classifier's SGD against a naive float64 loop, an end-to-end probe of a frozen
resnet8 on the JPEG ImageFolder set, and one-line errors for bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pckd.data.loader import epoch_permutation
from pckd.engine import probe as probe_mod
from pckd.engine.probe import ProbeConfig, cached_batches, make_linear, run_probe, train_linear
from pckd.errors import UserError


# ---- (1) the linear layer's training equals a hand-written float64 SGD -------------------------------------
def _reference_sgd(w0: torch.Tensor, b0: torch.Tensor, x: torch.Tensor, y: torch.Tensor, cfg: ProbeConfig
                   ) -> tuple[list[list[float]], list[float]]:
    """Mean-CE SGD with momentum and weight decay (PyTorch's update rule), sample by sample in Python floats."""
    w = [[float(v) for v in row] for row in w0.double()]
    b = [float(v) for v in b0.double()]
    k, d = len(w), len(w[0])
    buf_w = buf_b = None
    for epoch in range(1, cfg.epochs + 1):
        lr = cfg.lr * cfg.lr_decay ** sum(epoch > m for m in cfg.milestones)
        order = epoch_permutation(x.shape[0], cfg.seed, epoch).tolist()
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            gw = [[0.0] * d for _ in range(k)]
            gb = [0.0] * k
            for i in idx:
                xi = [float(v) for v in x[i].double()]
                z = [sum(w[c][j] * xi[j] for j in range(d)) + b[c] for c in range(k)]
                top = max(z)
                e = [math.exp(v - top) for v in z]
                p = [v / sum(e) for v in e]
                for c in range(k):
                    delta = (p[c] - (1.0 if c == int(y[i]) else 0.0)) / len(idx)
                    gb[c] += delta
                    for j in range(d):
                        gw[c][j] += delta * xi[j]
            gw = [[gw[c][j] + cfg.weight_decay * w[c][j] for j in range(d)] for c in range(k)]
            gb = [gb[c] + cfg.weight_decay * b[c] for c in range(k)]
            if buf_w is None:  # PyTorch: the first step's buffer is the gradient itself
                buf_w, buf_b = gw, gb
            else:
                buf_w = [[cfg.momentum * buf_w[c][j] + gw[c][j] for j in range(d)] for c in range(k)]
                buf_b = [cfg.momentum * buf_b[c] + gb[c] for c in range(k)]
            w = [[w[c][j] - lr * buf_w[c][j] for j in range(d)] for c in range(k)]
            b = [b[c] - lr * buf_b[c] for c in range(k)]
    return w, b


def test_linear_training_matches_naive_float64_sgd():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(10, 5, generator=gen)
    y = torch.randint(0, 3, (10,), generator=gen)
    x_test = torch.randn(7, 5, generator=gen)
    y_test = torch.randint(0, 3, (7,), generator=gen)
    cfg = ProbeConfig(epochs=3, batch_size=4, lr=0.5, momentum=0.9, weight_decay=1e-2, milestones=[1, 2],
                      lr_decay=0.5, seed=7)
    linear = make_linear(5, 3, cfg.seed)
    w0, b0 = linear.weight.detach().clone(), linear.bias.detach().clone()
    bound = 1 / math.sqrt(5)
    assert w0.abs().max() <= bound and b0.abs().max() <= bound  # nn.Linear's default init range
    assert torch.equal(make_linear(5, 3, cfg.seed).weight, w0)  # seeded, independent of the global RNG

    history = train_linear(linear, cfg, lambda e: cached_batches(x, y, cfg.batch_size, cfg.seed, e), x_test, y_test)
    w_ref, b_ref = _reference_sgd(w0, b0, x, y, cfg)
    expected_w, expected_b = torch.tensor(w_ref, dtype=torch.float64), torch.tensor(b_ref, dtype=torch.float64)
    torch.testing.assert_close(linear.weight.detach().double(), expected_w, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(linear.bias.detach().double(), expected_b, atol=1e-5, rtol=1e-5)

    assert [r["lr"] for r in history] == [0.5, 0.25, 0.125]
    pred = [max(range(3), key=lambda c: sum(w_ref[c][j] * float(x_test[i, j]) for j in range(5)) + b_ref[c])
            for i in range(7)]
    hand_top1 = 100.0 * sum(p == int(t) for p, t in zip(pred, y_test)) / 7
    assert history[-1]["top1"] == pytest.approx(hand_top1)
    assert history[-1]["top5"] == pytest.approx(100.0)  # 3 classes: always within the top 5


# ---- (2) end to end on the JPEG ImageFolder set -------------------------------------------------------------
@pytest.fixture
def captured_backbone(monkeypatch):
    """Keeps the backbone run_probe builds, to compare its state afterwards."""
    built = []
    original = probe_mod.build_network

    def capture(*args, **kwargs):
        built.append(original(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(probe_mod, "build_network", capture)
    return built


def _folder_overrides(shared_data: Path, out: Path, epochs: int) -> list[str]:
    return ["data.name=imagefolder", f"data.root={shared_data / 'cifar10-jpeg-mini'}", "data.image_size=32",
            "data.classes=2", "data.num_workers=0", "train.device=cpu", "train.progress=false",
            f"probe.epochs={epochs}", "probe.milestones=[6,8]", f"probe.output_dir={out}"]


def _assert_backbone_unchanged(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == weights.keys()
    for key, value in weights.items():  # weights, BatchNorm running stats and batch counters alike
        assert torch.equal(after[key].cpu(), value), key
    assert not model.training


def test_probe_of_frozen_resnet8_on_imagefolder(shared_data, random_teacher, tmp_path, captured_backbone):
    out = tmp_path / "probe"
    result = run_probe(str(random_teacher), ["student.arch=resnet8", *_folder_overrides(shared_data, out, 10)])
    saved = json.loads((out / "probe.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["data"] == {"name": "imagefolder", "root": str(shared_data / "cifar10-jpeg-mini"), "image_size": 32,
                             "num_classes": 2, "train_size": 200, "test_size": 40}
    assert saved["feature_dim"] == 64 and saved["source_classes"] == 10 and saved["probe"]["epochs"] == 10
    assert [r["epoch"] for r in saved["epochs"]] == list(range(1, 11))
    assert saved["epochs"][-1]["lr"] == pytest.approx(0.001)  # 0.1 decayed after epochs 6 and 8
    assert all(0.0 <= r["top1"] <= r["top5"] <= 100.0 and math.isfinite(r["train_loss"]) for r in saved["epochs"])
    assert saved["best_top1"] == max(r["top1"] for r in saved["epochs"])
    assert saved["last_top1"] == saved["epochs"][-1]["top1"]
    # written rounded: 0.01 points for accuracies, 4 decimals for losses (no 37.50000000000001)
    assert all(round(r[k], 2) == r[k] for r in saved["epochs"] for k in ("top1", "top5"))
    assert all(round(r["train_loss"], 4) == r["train_loss"] for r in saved["epochs"])
    assert saved["best_top1"] > 60.0  # airplane vs automobile from random conv features (chance 50%; gets 70)
    _assert_backbone_unchanged(captured_backbone[0], torch.load(random_teacher, weights_only=True))


def test_probe_of_pckd_checkpoint_with_augmented_views(shared_data, random_teacher, tmp_path, captured_backbone):
    weights = torch.load(random_teacher, weights_only=True)
    ckpt = tmp_path / "run" / "best.pt"
    ckpt.parent.mkdir()
    torch.save({"format": "pckd", "arch": "resnet8", "num_classes": 10, "model": weights,
                "config": "data:\n  name: cifar100\n"}, ckpt)
    overrides = [o for o in _folder_overrides(shared_data, tmp_path, 2) if not o.startswith("probe.output_dir")]
    result = run_probe(str(ckpt), overrides + ["probe.augment=true", "probe.normalization=cifar100"])
    assert result["arch"] == "resnet8" and result["source_data"] == "cifar100"
    assert Path(result["output_dir"]) == ckpt.parent.resolve() / "probe-cifar10-jpeg-mini"
    assert (ckpt.parent / "probe-cifar10-jpeg-mini" / "probe.json").is_file()
    assert len(result["epochs"]) == 2 and 0.0 <= result["last_top1"] <= 100.0
    _assert_backbone_unchanged(captured_backbone[0], weights)


# ---- (3) one-line errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, expected", [
    (["student.arch=resnet8", "probe.epoch=3"], "unknown config key 'probe.epoch': did you mean 'probe.epochs'?"),
    (["student.arch=resnet8", "prob.epochs=3"], "did you mean 'probe'?"),
    (["student.arch=resnet8", "probe.lr=fast"], "config key 'probe.lr'"),
    (["student.arch=resnet8", "probe.normalization=cifar"], "is not one of data, cifar100"),
    (["student.arch=resnet8", "data.nme=cifar10"], "did you mean 'data.name'?"),
    ([], "add student.arch=NAME"),
])
def test_bad_input_gives_one_line_error(random_teacher, overrides, expected):
    with pytest.raises(UserError) as info:
        run_probe(str(random_teacher), overrides)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_missing_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        run_probe(str(tmp_path / "nope.pt"), ["student.arch=resnet8"])
