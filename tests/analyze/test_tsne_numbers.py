"""t-SNE point choice, neighbour agreement (against a naive loop) and a fixed-seed embedding."""

from __future__ import annotations

import numpy as np
import pytest

from pckd.analyze.tsne import embed, neighbour_agreement, plot_tsne, select_points
from pckd.errors import UserError


def test_select_points_is_balanced_and_ordered():
    labels = np.array([0, 0, 0, 0, 1, 2, 1, 0])
    assert select_points(labels, [0, 1], 4).tolist() == [0, 1, 4, 6]
    assert select_points(labels, [1, 2], 10).tolist() == [4, 5, 6]


def test_neighbour_agreement_matches_a_loop():
    rng = np.random.default_rng(0)
    coords, labels = rng.normal(size=(30, 2)), rng.integers(0, 3, size=30)
    total = 0.0
    for i in range(30):
        d = [(float(np.sum((coords[i] - coords[j]) ** 2)), j) for j in range(30) if j != i]
        near = [j for _, j in sorted(d)[:5]]
        total += sum(labels[j] == labels[i] for j in near) / 5
    assert neighbour_agreement(coords, labels, 5) == pytest.approx(total / 30)


def test_embed_is_seeded_and_separates_clusters(tmp_path):
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(size=(40, 64)) + 8 * k for k in range(3)])
    y = np.repeat(np.arange(3), 40)
    a, b = embed(x, 0, 30.0, 250), embed(x, 0, 30.0, 250)
    assert a.shape == (120, 2) and np.allclose(a, b)
    assert neighbour_agreement(a, y) > 0.95
    with pytest.raises(UserError, match="at least 5"):
        embed(x[:3], 0, 30.0, 250)
    assert plot_tsne([("student", a, y), ("teacher", b, y)], ["a", "b", "c"], tmp_path / "t.png", "t-SNE").is_file()
