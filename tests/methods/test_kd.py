"""Hinton KD against an independent per-sample computation."""

from __future__ import annotations

import math

import pytest
import torch

from pckd.methods.kd import kd_loss, kd_per_sample


def naive_kd_row(s: list[float], t: list[float], T: float) -> float:
    zs = [math.exp(v / T) for v in s]
    zt = [math.exp(v / T) for v in t]
    ps = [v / sum(zs) for v in zs]
    pt = [v / sum(zt) for v in zt]
    return T * T * sum(p * (math.log(p) - math.log(q)) for p, q in zip(pt, ps))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kd_matches_naive(dtype, T):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 5, generator=g, dtype=dtype) * 3, torch.randn(6, 5, generator=g, dtype=dtype) * 3
    expected = [naive_kd_row(s[i].tolist(), t[i].tolist(), T) for i in range(6)]
    got = kd_per_sample(s, t, T)
    assert got.tolist() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert kd_loss(s, t, T).item() == pytest.approx(sum(expected) / 6, rel=1e-5)


def test_kd_hand_value():
    # student uniform over 2 classes, teacher (T=1) p = (e/(1+e), 1/(1+e)): KL = sum p log(2p)
    p = math.e / (1 + math.e)
    expected = p * math.log(2 * p) + (1 - p) * math.log(2 * (1 - p))
    assert kd_per_sample(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), 1.0).item() == pytest.approx(expected, rel=1e-6)
