"""Every shipped config resolves, and the files equal what tools/make_configs.py writes from its tables."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from pckd.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p.name != "base.yaml")


def _generator():
    spec = importlib.util.spec_from_file_location("make_configs", ROOT / "tools" / "make_configs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_files_match_generator():
    gen = _generator()
    expected = gen.all_configs()
    on_disk = {str(p.relative_to(ROOT / "configs")) for p in (ROOT / "configs").rglob("*.yaml")}
    assert on_disk == set(expected), "run: python tools/make_configs.py"
    for rel, cfg in expected.items():
        assert (ROOT / "configs" / rel).read_text() == gen.render(rel, cfg), rel


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_config_resolves(path):
    cfg = load_config(path)
    assert cfg.train.epochs > 0 and cfg.output_dir.startswith("runs/")


def test_paper_pairs_have_kd_configs():
    gen = _generator()
    for teacher, student in gen.PAIRS:
        cfg = load_config(ROOT / "configs" / "cifar100" / "kd" / f"{teacher}-{student}.yaml")
        assert (cfg.teacher.arch, cfg.student.arch) == (teacher, student)
        assert cfg.train.lr == (0.01 if student in {"MobileNetV2", "ShuffleV1", "ShuffleV2"} else 0.05)
        assert (cfg.kd.temperature, cfg.kd.ce_weight, cfg.kd.kd_weight) == (4.0, 0.1, 0.9)
        assert (cfg.train.epochs, cfg.train.milestones, cfg.train.batch_size) == (240, [150, 180, 210], 64)
    assert len(gen.PAIRS) == 13
