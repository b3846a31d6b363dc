"""Shared test fixtures: the real data in ../shared (through PCKD_TEST_DATA) and small helpers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch


def _shared_data_dir() -> Path | None:
    value = os.environ.get("PCKD_TEST_DATA")
    if value and Path(value).is_dir():
        return Path(value)
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the shared test data (cifar-100-python/, cifar10-jpeg-mini/). Skips outside CI when absent."""
    root = _shared_data_dir()
    if root is None:
        if os.environ.get("CI"):
            pytest.fail("PCKD_TEST_DATA must point at the shared data folder in CI")
        pytest.skip("set PCKD_TEST_DATA to the shared data folder to run this test")
    return root


@pytest.fixture(scope="session")
def zoo_reference(shared_data: Path) -> dict:
    """State-dict keys/shapes, parameter counts and feature shapes of the standard CIFAR zoo."""
    path = Path(os.environ.get("PCKD_ZOO_REFERENCE", shared_data.parent / "fixtures" / "cifar_zoo_reference.json"))
    if not path.is_file():
        pytest.skip(f"zoo reference fixture not found at {path}")
    return json.loads(path.read_text())


@pytest.fixture(autouse=True)
def _small_threads():
    torch.set_num_threads(2)
    yield


@pytest.fixture(scope="module")
def random_teacher(tmp_path_factory) -> Path:
    """A resnet8 (10 classes) teacher straight from its seeded random init: enough where only equality matters."""
    from pckd.models import create_model

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("teacher") / "resnet8.pt"
    torch.save(create_model("resnet8", 10).state_dict(), path)
    return path


@pytest.fixture
def one_thread():
    """One intra-op thread, for tests made of many tiny ops where two threads only spin against each other."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


SMALL_TEACHERS = ("resnet56", "wrn_40_2")  # small enough for a test archive of published teachers


@pytest.fixture
def small_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The published-teacher registry reduced to SMALL_TEACHERS (and the ImageNet entries)."""
    from pckd.models.published import registry

    for name in list(registry.TEACHERS):
        if registry.TEACHERS[name].archive is not None and name not in SMALL_TEACHERS:
            monkeypatch.delitem(registry.TEACHERS, name)
