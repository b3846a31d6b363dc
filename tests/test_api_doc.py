"""docs/api.md: the "PCKD in your own loop" example runs as written; the API's pieces behave as documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import pckd
from pckd.errors import UserError

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_own_loop_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    (code,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    scope: dict = {}
    exec(compile(code, str(DOC), "exec"), scope)
    out = capsys.readouterr().out
    assert "epoch 1:" in out and "epoch 2:" in out and "'ccc'" in out
    history = scope["history"]
    assert [e["epoch"] for e in history] == [1, 2] and history[0]["samples"] == 128
    assert history[1]["threshold"] == pytest.approx(1.015 ** 2)


def test_build_distiller_reads_params_like_a_config() -> None:
    s, t = pckd.create_model("resnet8", 10), pckd.create_model("resnet8", 10)
    d = pckd.build_distiller("kd", s, t, temperature="2", weighting={"mode": "off"})
    assert d.params.temperature == 2.0 and d.weighting.mode == "none"
    assert {id(p) for p in d.parameters()} == {id(p) for p in s.parameters()}  # the teacher stays out
    with pytest.raises(UserError, match="'kd.temperature'=-1.0 must be positive"):
        pckd.build_distiller("kd", s, t, temperature=-1)
    with pytest.raises(UserError, match="needs a teacher"):
        pckd.build_distiller("kd", s)


def test_torchvision_models_get_the_features_interface() -> None:
    from torchvision.models import resnet18

    d = pckd.build_distiller("kd", resnet18(num_classes=7), resnet18(num_classes=7))
    assert d.num_classes == 7
    out = d(pckd.batch_from_tensors(torch.randn(2, 3, 64, 64), torch.tensor([1, 6])), 1)
    assert out.logits.shape == (2, 7) and set(out.losses) == {"ce", "kd"}


def test_batches_are_checked() -> None:
    with pytest.raises(UserError, match="float tensor"):
        pckd.batch_from_tensors(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 1]))
    batch = pckd.batch_from_uint8(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8), torch.tensor([0, 1]))
    views = batch.augment.rotated_views(batch.images, 4)
    assert views.shape == (8, 3, 32, 32) and views.dtype == torch.float32


def test_module_losses_equal_their_functions() -> None:
    s, t, y = torch.randn(4, 6), torch.randn(4, 6), torch.tensor([0, 1, 2, 3])
    assert torch.equal(pckd.losses.KDLoss(3.0)(s, t), pckd.losses.kd_loss(s, t, 3.0))
    assert torch.equal(pckd.losses.DKDLoss(1.0, 2.0, 4.0)(s, t, y), pckd.losses.dkd_loss(s, t, y, 1.0, 2.0, 4.0))
    # KD by hand: T^2 * sum p_t (log p_t - log p_s), batch mean
    T = 3.0
    p_t, log_p_s = torch.softmax(t / T, 1), torch.log_softmax(s / T, 1)
    by_hand = (T * T * (p_t * (p_t.log() - log_p_s)).sum(1)).mean()
    assert torch.allclose(pckd.losses.kd_loss(s, t, T), by_hand, atol=1e-6)
