"""PCKD's CE-only ablations (Tables VI/VII) need no teacher checkpoint; every other PCKD run does."""

from __future__ import annotations

import pytest

from pckd.config import load_config
from pckd.engine.build import build
from pckd.errors import UserError

DIGITS = ["method=pckd", "data.name=digits", "student.arch=resnet8", "train.device=cpu", "teacher.checkpoint=null"]
NO_DISTILLATION = ["pckd.kd_weight=0", "pckd.ccc_weight=0", "pckd.fa_weight=0", "pckd.ca_weight=0",
                   "pckd.preview.on_ce=true", "pckd.n_rotations=1"]


def test_ce_only_pckd_builds_without_teacher():
    built = build(load_config(None, DIGITS + NO_DISTILLATION))
    assert built.distiller.teacher is None
    assert built.distiller.extra_parameters() == 0


def test_any_distillation_term_requires_the_teacher_checkpoint():
    with pytest.raises(UserError, match="method=pckd needs a trained teacher: set teacher.checkpoint"):
        build(load_config(None, DIGITS + NO_DISTILLATION[:-3] + ["pckd.ca_weight=1"]))
