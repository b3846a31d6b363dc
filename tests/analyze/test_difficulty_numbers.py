"""Eq. 5 difficulty, the records file and the easiest/hardest choice."""

from __future__ import annotations

import numpy as np
import pytest

from pckd.analyze.difficulty import difficulty_scores, extremes, read_records
from pckd.errors import UserError


def test_difficulty_is_ce_over_its_mean():
    assert difficulty_scores(np.array([1.0, 2.0, 3.0])).tolist() == pytest.approx([0.5, 1.0, 1.5])
    assert difficulty_scores(np.zeros(3)).tolist() == [0.0, 0.0, 0.0]


def test_extremes_order_and_ties():
    s = np.array([0.5, 2.0, 0.1, 2.0, 1.0])
    easy, hard = extremes(s, 2)
    assert easy.tolist() == [2, 0] and hard.tolist() == [1, 3]
    assert [len(x) for x in extremes(s, 10)] == [2, 2]


def test_read_records(tmp_path):
    path = tmp_path / "preview_records.csv"
    path.write_text("index,label,difficulty,weight\n0,3,0.25,1\n1,4,1.75,0.05\n")
    index, label, diff = read_records(path)
    assert index.tolist() == [0, 1] and label.tolist() == [3, 4] and diff.tolist() == [0.25, 1.75]
    with pytest.raises(UserError, match="only PCKD runs"):
        read_records(tmp_path / "missing.csv")
    path.write_text("index,label\n0,x\n")
    with pytest.raises(UserError, match="cannot be read"):
        read_records(path)
