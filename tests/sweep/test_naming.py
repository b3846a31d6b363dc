"""Run folder names: readable, stable across versions and invocations, and distinct for distinct runs."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import yaml

from pckd.config import load_config, parse_overrides
from pckd.config.yaml_source import Plain
from pckd.sweep.naming import (
    config_id,
    format_value,
    override_strings,
    run_folder,
    run_leaf,
)
from pckd.sweep.plan import expand_braces


def _independent_hash(items: list[str]) -> str:
    """SHA-256 of the JSON list ["k=v", ...] (sorted by key, compact separators), first 8 hex digits."""
    text = "[" + ",".join('"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"' for item in items) + "]"
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def test_names_are_exactly_as_documented() -> None:
    assert run_leaf(0, {}) == "seed0"
    items = ["pckd.fa_weight=10", "train.epochs=2"]
    assert run_leaf(2, {"train.epochs": 2, "pckd.fa_weight": 10}) == f"seed2-fa_weight=10-epochs=2-{_independent_hash(items)}"
    assert run_leaf(1, {"pckd.preview.mode": "off"}) == f"seed1-mode=off-{_independent_hash(['pckd.preview.mode=' + chr(39) + 'off' + chr(39)])}"
    cwd = Path("/project")
    assert config_id(Path("configs/cifar100/kd/resnet32x4-resnet8x4.yaml"), cwd) == "cifar100/kd/resnet32x4-resnet8x4"
    assert config_id(Path("mine/exp.yml"), cwd) == "mine/exp"
    assert config_id(Path("/elsewhere/x/exp.yaml"), cwd).startswith("external/x/exp-")
    folder = run_folder(Path("runs"), Path("configs/a/b.yaml"), 0, {"train.lr": 0.1}, cwd)
    assert folder == Path("runs/a/b") / f"seed0-lr=0.1-{_independent_hash(['train.lr=0.1'])}"


def test_names_do_not_depend_on_key_order_and_values_read_back() -> None:
    a = {"train.lr": 0.1, "pckd.fa_weight": 20, "data.classes": 10}
    b = dict(reversed(list(a.items())))
    assert run_leaf(0, a) == run_leaf(0, b)
    values = [10, 10.0, 0.05, 1e-5, "off", "preview", True, None, [150, 180], {"mode": "off"}, "a b", "x=y"]
    for value in values:  # a value (not text) comes back as itself
        text = format_value(value)
        assert parse_overrides([f"k={text}"])["k"] == value, (value, text)
        assert yaml.safe_load(text) == value
    # Text from a spec or the command line stays as written: it means what it means in a config file.
    assert [format_value(Plain(t)) for t in ("off", "10", "1e-3")] == ["off", "10", "1e-3"]
    assert format_value([Plain("150"), Plain("180")]) == "[150, 180]"
    cfg = load_config(None, ["method=pckd", f"pckd.preview.mode={format_value(Plain('off'))}",
                             f"train.milestones={format_value([Plain('5'), Plain('8')])}"])
    assert cfg.pckd.preview.mode == "off" and cfg.train.milestones == [5, 8]


def test_distinct_runs_get_distinct_folders() -> None:
    cwd = Path("/p")
    configs = [Path(f"configs/cifar100/{m}/{pair}.yaml") for m in ("kd", "pckd", "pckd/wo_kd")
               for pair in ("a-b", "c-d")] + [Path("other/kd/a-b.yaml")]
    grids = [{}, {"pckd.fa_weight": 10}, {"pckd.fa_weight": 10.0}, {"pckd.fa_weight": "10"},
             {"pckd.preview.mode": "off"}, {"pckd.preview.mode": False}, {"kd.temperature": 4},
             {"pckd.temperature": 4}, {"train.epochs": 1, "data.classes": 10}, {"train.epochs": 10, "data.classes": 1},
             {"x." + "k" * 80: 1}, {"x." + "k" * 80: 2}]  # readable parts cut to the same text: the hash differs
    folders = [run_folder(Path("runs"), c, s, g, cwd) for c, s, g in itertools.product(configs, (0, 1, 10), grids)]
    assert len(set(folders)) == len(folders)
    assert all(len(f.name) <= len("seed10-") + 60 + 9 for f in folders)


def test_brace_alternatives_expand_like_a_shell() -> None:
    assert expand_braces("c/{kd,dkd}/{x,y}.yaml") == ["c/kd/x.yaml", "c/kd/y.yaml", "c/dkd/x.yaml", "c/dkd/y.yaml"]
    assert expand_braces("c/{a,b/{c,d}}.yaml") == ["c/a.yaml", "c/b/c.yaml", "c/b/d.yaml"]
    assert expand_braces("plain/*.yaml") == ["plain/*.yaml"]


def test_override_strings_are_sorted_key_value_pairs() -> None:
    assert override_strings({"b.x": [1, 2], "a.y": "off"}) == ["a.y='off'", "b.x=[1, 2]"]
