"""The ``logit_standardize`` switch of `kd`, `dkd` and `ckd`: on, each loss term equals the method's loss on
logits z-scored by hand in this file (a plain loop, unbiased std + 1e-7 as in Sun et al.'s released code); off,
the terms are those of the raw logits; the CE term always sees the raw logits."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from pckd.data.info import DataInfo
from pckd.methods.ckd import CKD, CKDParams, ckd_per_sample
from pckd.methods.dkd import DKD, DKDParams, nckd_per_sample, tckd_per_sample, warmup_factor
from pckd.methods.kd import KD, KDParams, kd_per_sample
from pckd.methods.ls import LS, LSParams
from pckd.models import create_model
from tests.methods.scaffold import NormalisingAugmenter, make_batch


def _zscore_by_hand(logits: Tensor) -> Tensor:
    rows = []
    for row in logits.double().tolist():
        k = len(row)
        mean = sum(row) / k
        std = math.sqrt(sum((v - mean) ** 2 for v in row) / (k - 1))
        rows.append([(v - mean) / (std + 1e-7) for v in row])
    return torch.tensor(rows, dtype=torch.float64)


def _step(cls, params, epoch: int = 30):
    """One training step of ``cls`` on tiny real models; returns (losses, student logits, teacher logits, labels)."""
    torch.manual_seed(0)
    teacher, student = create_model("resnet8", 10), create_model("resnet8", 10)
    method = cls(student, teacher, params, DataInfo(num_classes=10))
    method.train()
    batch = make_batch(6, 10, seed=3, labels="cycle", augment=NormalisingAugmenter(mean=0.0, std=1.0))
    out = method.forward_train(batch, epoch)
    with torch.no_grad():
        t_logits = teacher(batch.augment.standard(batch.images))
    return out.losses, out.logits.detach(), t_logits, batch.labels


@pytest.mark.parametrize("on", [False, True])
def test_kd_switch(on):
    losses, s, t, y = _step(KD, KDParams(logit_standardize=on))
    s_in, t_in = (_zscore_by_hand(s), _zscore_by_hand(t)) if on else (s.double(), t.double())
    want = 0.9 * kd_per_sample(s_in, t_in, 4.0).mean().item()
    assert losses["kd"].item() == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert losses["ce"].item() == pytest.approx(0.1 * torch.nn.functional.cross_entropy(s, y).item(), rel=1e-4, abs=1e-6)
    if on:  # standardisation changes the term (the logits are far from z-scores already)
        raw = 0.9 * kd_per_sample(s.double(), t.double(), 4.0).mean().item()
        assert abs(losses["kd"].item() - raw) > 1e-3 * abs(raw)


def test_kd_switch_with_sun_et_al_recipe_is_method_ls():
    """KD + standardisation at T 2, CE 0.1, KD 9 is exactly `ls` (their released KD recipe)."""
    kd, *_ = _step(KD, KDParams(logit_standardize=True, temperature=2.0, ce_weight=0.1, kd_weight=9.0))
    ls, *_ = _step(LS, LSParams())
    assert kd["kd"].item() == pytest.approx(ls["ls"].item(), rel=1e-6)
    assert kd["ce"].item() == pytest.approx(ls["ce"].item(), rel=1e-6)


@pytest.mark.parametrize("on", [False, True])
def test_dkd_switch(on):
    p = DKDParams(logit_standardize=on, temperature=2.0 if on else 4.0, alpha=9.0, beta=18.0)
    losses, s, t, y = _step(DKD, p, epoch=10)
    s_in, t_in = (_zscore_by_hand(s), _zscore_by_hand(t)) if on else (s.double(), t.double())
    ramp = warmup_factor(10, 20)
    want_t = ramp * 9.0 * tckd_per_sample(s_in, t_in, y, p.temperature).mean().item()
    want_n = ramp * 18.0 * nckd_per_sample(s_in, t_in, y, p.temperature).mean().item()
    assert losses["tckd"].item() == pytest.approx(want_t, rel=1e-4, abs=1e-6)
    assert losses["nckd"].item() == pytest.approx(want_n, rel=1e-4, abs=1e-6)
    assert losses["ce"].item() == pytest.approx(torch.nn.functional.cross_entropy(s, y).item(), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("on", [False, True])
def test_ckd_switch(on):
    losses, s, t, y = _step(CKD, CKDParams(logit_standardize=on, weight=100.0))
    s_in, t_in = (_zscore_by_hand(s), _zscore_by_hand(t)) if on else (s.double(), t.double())
    want = 100.0 * ckd_per_sample(s_in, t_in, 1.0).mean().item()
    assert losses["ckd"].item() == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert losses["ce"].item() == pytest.approx(torch.nn.functional.cross_entropy(s, y).item(), rel=1e-4, abs=1e-6)
