"""The `pckd` command: listing commands, config printing, help, and the demo (smoke scale)."""

from __future__ import annotations

import pytest

from pckd.cli import main


def test_models_lists_zoo_with_parameter_counts(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    # resnet8 with 100 classes has 83,892 parameters (RepDistiller's definition), i.e. 0.08 M
    assert any(line.split()[:1] == ["resnet8"] and "0.08" in line and " 64 " in line for line in out.splitlines())
    assert "torchvision.resnet18" in out and "ShuffleV2" in out


def test_methods_lists_every_method_and_its_keys(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("ce", "kd", "pckd", "ckd", "intra_class", "ls"):
        assert f"\n{name} " in "\n" + out
    assert "\nlskd " not in "\n" + out  # renamed to ls (the paper's LSKD is another, unbuilt method)
    assert "kd.logit_standardize = false" in out and "dkd.logit_standardize = false" in out
    assert "pckd.gamma = 1.005" in out and "kd.temperature = 4.0" in out


def test_config_prints_resolved_values(capsys):
    assert main(["config", "configs/cifar100/kd/resnet32x4-resnet8x4.yaml", "train.epochs=3"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 3" in out and "arch: resnet8x4" in out and "temperature: 4.0" in out


@pytest.mark.parametrize("command", ["train", "eval", "config", "demo", "models", "methods", "export", "report", "probe"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "usage: pckd" in capsys.readouterr().out


def test_bad_key_is_one_line_exit_2(capsys):
    assert main(["config", "configs/cifar100/kd/resnet32x4-resnet8x4.yaml", "train.lr_rate=0.1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["pckd: error: unknown config key 'train.lr_rate': did you mean 'train.lr'?"]


@pytest.mark.slow
def test_demo_smoke_scale_prints_table(tmp_path, capsys):
    assert main(["demo", "--output-dir", str(tmp_path), "--scale", "0.1"]) == 0
    out = capsys.readouterr().out
    for row in ("teacher (resnet14, ce)", "student (resnet8, ce)", "student (resnet8, kd)", "student (resnet8, pckd)",
                "student (resnet8, ckd)"):
        assert f"| {row} |" in out
    assert (tmp_path / "results.md").read_text().count("\n") == 7
    assert (tmp_path / "student-pckd" / "summary.json").exists()


def test_demo_methods_all_adds_every_registered_student_method(capsys):
    from pckd.demo import STUDENT_RUNS, demo_methods
    from pckd.methods.base import method_registry

    everything = demo_methods(["all"])
    assert everything[:4] == list(STUDENT_RUNS)  # the default four first
    assert set(everything) == {"ce"} | {n for n, s in method_registry().items() if s.cls.needs_teacher}
    assert demo_methods(None) == list(STUDENT_RUNS) and demo_methods(["dkd", "crd"]) == ["dkd", "crd"]
    assert main(["demo", "--methods", "kdd"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown student method 'kdd'" in err[0] and "choose from all, " in err[0]


def test_demo_runs_both_stages_of_sskd_and_pckd_methods_lists_it(tmp_path, capsys):
    from pckd.demo import STUDENT_EPOCHS, _config, demo_methods, short_first_stage

    assert "sskd" in demo_methods(["all"])
    cfg = _config("sskd", tmp_path, STUDENT_EPOCHS, "resnet8", short_first_stage("sskd", STUDENT_EPOCHS),
                  "teacher.pt")
    assert cfg.sskd.init_epochs == 1 < cfg.train.epochs  # the student stage gets the demo's other epochs
    assert cfg.sskd.init_milestones == []
    # every two-stage method, read off its fields; a 1-epoch demo (--scale 0.2) drops the first stage
    assert {m: short_first_stage(m, 5) for m in ("ab", "ft", "fsp", "kd")} == {
        "ab": {"init_epochs": 1}, "ft": {"init_epochs": 1}, "fsp": {"init_epochs": 1}, "kd": {}}
    assert short_first_stage("ab", 1) == {"init_epochs": 0}
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert any(line.startswith("sskd ") for line in out.splitlines())
    assert "    sskd.init_epochs = 60  [>= 0]" in out
