"""Refactoring must not change what any method computes: today's code against the committed snapshot, exactly.

The snapshot (tests/fixtures/method_regression.json) was written by the code whose formulas the method tests check
against naive loops; here every case is recomputed in float64 and must reproduce each loss term and gradient
summary bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from .snapshot import CASES, EPOCHS, SNAPSHOT, compute_case

EPOCHS_KEYS = [str(e) for e in EPOCHS]


@pytest.fixture(scope="module")
def snapshot() -> dict:
    return json.loads(SNAPSHOT.read_text())


@pytest.mark.parametrize("name,method,overrides", CASES, ids=[c[0] for c in CASES])
def test_method_reproduces_the_snapshot(name: str, method: str, overrides: list[str], snapshot: dict,
                                        tmp_path: Path) -> None:
    torch.set_num_threads(1)
    expected = snapshot[name]
    got = compute_case(method, overrides, tmp_path, dtype=expected["dtype"])
    assert set(got) == set(expected)
    for epoch in EPOCHS_KEYS:
        want = expected[epoch]
        have = got[epoch]
        assert have["losses"] == want["losses"], (epoch, have["losses"], want["losses"])
        assert have["logits"] == want["logits"], epoch
        assert set(have["grads"]) == set(want["grads"]), epoch
        for param, summary in want["grads"].items():
            assert have["grads"][param] == summary, (epoch, param)
        assert any(v is not None for v in have["grads"].values())
