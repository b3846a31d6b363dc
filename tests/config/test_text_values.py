"""A text or choice key keeps its value as written, on the command line and in YAML files alike.

PyYAML reads ``off``/``yes``/``on`` as booleans and ``010`` as 8; every text and choice key of every method (and of
the run config) must see the text itself.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from pckd.config import load_config
from pckd.errors import UserError
from pckd.methods.base import method_registry
from pckd.params import Choice, field_types

WORDS = ["off", "on", "yes", "no", "null", "1e-3", "010", "True"]


def _text_fields(cls: type, prefix: str) -> list[tuple[str, type]]:
    """(key, type) of every str/choice field of the dataclass ``cls``, nested sections included."""
    out: list[tuple[str, type]] = []
    for name, tp in field_types(cls).items():
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        base = args[0] if typing.get_origin(tp) is typing.Union and len(args) == 1 else tp
        if dataclasses.is_dataclass(base):
            out += _text_fields(base, f"{prefix}.{name}")
        elif base is str or (isinstance(base, type) and issubclass(base, Choice)):
            out.append((f"{prefix}.{name}", base))
    return out


METHOD_FIELDS = [(m, key, tp) for m, spec in sorted(method_registry().items()) for key, tp in _text_fields(spec.params, m)]


def test_every_method_text_field_is_covered():
    keys = {key for _, key, _ in METHOD_FIELDS}
    assert {"pckd.preview.mode", "pckd.ccc", "ckd.negatives", "crd.negatives", "cc.kernel", "intra_class.margin",
            "kd.weighting.mode"} <= keys


def _get(cfg: object, key: str) -> object:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


@pytest.mark.parametrize("method,key,tp", METHOD_FIELDS, ids=[k for _, k, _ in METHOD_FIELDS])
@pytest.mark.parametrize("source", ["override", "yaml"])
def test_method_text_fields_keep_the_words(method: str, key: str, tp: type, source: str, tmp_path: Path) -> None:
    for word in WORDS:
        if source == "override":
            args: tuple = (None, [f"method={method}", f"{key}={word}"])
        else:
            path = tmp_path / f"{word}.yaml"
            lines = [f"method: {method}", f"{method}:"]
            parts = key.split(".")[1:]
            for depth, part in enumerate(parts):
                lines.append("  " * (depth + 1) + f"{part}:" + (f" {word}" if depth == len(parts) - 1 else ""))
            path.write_text("\n".join(lines) + "\n")
            args = (path, [])
        valid = issubclass(tp, Choice) and word in tp.__members__
        if valid or tp is str:
            cfg = load_config(*args)
            value = _get(cfg, key)
            assert value == (tp.__members__[word] if valid else word), (key, word, value)
        else:
            with pytest.raises(UserError) as info:
                load_config(*args)
            assert f"'{key}'='{word}'" in str(info.value), (word, str(info.value))


def test_preview_off_from_the_help_text_works(tmp_path: Path) -> None:
    cfg = load_config(None, ["method=pckd", "pckd.preview.mode=off"])
    assert cfg.pckd.preview.mode == "off"
    path = tmp_path / "off.yaml"
    path.write_text("method: pckd\npckd:\n  preview:\n    mode: off\n")
    assert load_config(path).pckd.preview.mode == "off"


@pytest.mark.parametrize("key", ["data.root", "output_dir", "student.arch", "train.device"])
def test_run_text_fields_keep_the_words(key: str) -> None:
    for word in ["off", "yes", "010", "1e-3"] + (["null"] if key != "train.device" else []):
        if key == "train.device":
            with pytest.raises(UserError, match=f"'train.device'='{word}'"):
                load_config(None, [f"{key}={word}"])
            continue
        assert _get(load_config(None, [f"{key}={word}"]), key) == word


def test_optional_text_reads_null_as_none_and_quoted_null_as_text() -> None:
    assert load_config(None, ["student.checkpoint=null"]).student.checkpoint is None
    assert load_config(None, ["student.checkpoint='null'"]).student.checkpoint == "null"


@pytest.mark.parametrize("word,expected", [("yes", True), ("no", False), ("on", True), ("off", False), ("1", True),
                                           ("0", False), ("True", True), ("false", False)])
def test_bool_keys_read_yaml_words(word: str, expected: bool) -> None:
    assert load_config(None, [f"train.deterministic={word}"]).train.deterministic is expected


def test_numbers_read_against_their_type() -> None:
    cfg = load_config(None, ["train.lr=1e-3", "train.epochs=010", "train.milestones=[010, 20]", "train.momentum=.5"])
    assert (cfg.train.lr, cfg.train.epochs, cfg.train.milestones, cfg.train.momentum) == (0.001, 10, [10, 20], 0.5)
    with pytest.raises(UserError, match="'train.epochs'='2.5' must be of type int"):
        load_config(None, ["train.epochs=2.5"])
