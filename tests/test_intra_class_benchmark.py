"""The metrics of benchmarks/intra_class_teacher.py against naive loops and hand-computed values."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("intra_class_teacher", ROOT / "benchmarks" / "intra_class_teacher.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _naive_pairwise(z: torch.Tensor) -> float:
    u = F.normalize(z.double(), dim=1)
    n = len(u)
    return sum(1 - float(u[i] @ u[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))


def test_mean_pairwise_cosine_distance_matches_loop(bench):
    z = torch.randn(9, 5, generator=torch.Generator().manual_seed(0))
    assert bench.mean_pairwise_cosine_distance(z) == pytest.approx(_naive_pairwise(z), abs=1e-12)
    # Two orthogonal and one opposite vector: distances 1, 2, 1 (each counted twice).
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    assert bench.mean_pairwise_cosine_distance(e) == pytest.approx((1 + 2 + 1) / 3)
    assert math.isnan(bench.mean_pairwise_cosine_distance(e[:1]))


def test_spread_intra_inter_and_ratio(bench):
    z = torch.randn(12, 4, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2] * 4)
    out = bench.spread(z, labels, 3)
    intra = sum(_naive_pairwise(z[labels == k]) for k in range(3)) / 3
    u = F.normalize(z.double(), dim=1)
    means = torch.stack([u[labels == k].mean(0) for k in range(3)])
    assert out["intra"] == pytest.approx(intra, abs=1e-12)
    assert out["inter"] == pytest.approx(_naive_pairwise(means), abs=1e-12)
    assert out["ratio"] == pytest.approx(intra / _naive_pairwise(means))


def test_non_target_entropy(bench):
    logits = torch.tensor([[5.0, 1.0, 1.0, 1.0], [0.0, 3.0, 0.0, -40.0]])
    labels = torch.tensor([0, 1])
    # Row 0: three equal non-target logits -> log 3 at any T. Row 1 at T=1: q = (1/2, 1/2, ~0) -> log 2.
    assert bench.non_target_entropy(logits[:1], labels[:1], 4.0) == pytest.approx(math.log(3))
    assert bench.non_target_entropy(logits[1:], labels[1:], 1.0) == pytest.approx(math.log(2), abs=1e-12)
    z = torch.randn(6, 5, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    p = torch.softmax(z.double() / 2.0, dim=1)
    naive = []
    for i in range(6):
        q = torch.cat([p[i, : y[i]], p[i, y[i] + 1:]])
        q = q / q.sum()
        naive.append(float(-(q * q.log()).sum()))
    assert bench.non_target_entropy(z, y, 2.0) == pytest.approx(sum(naive) / 6, abs=1e-12)
