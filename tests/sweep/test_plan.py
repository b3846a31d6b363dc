"""Plans: which runs a spec stands for, the dry run, the checks before anything starts, and the shipped specs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pckd.errors import UserError
from pckd.sweep import SweepOptions, check_plan, load_spec, plan_sweep, sweep_command
from pckd.sweep.naming import run_leaf

from .conftest import write_spec

ROOT = Path(__file__).resolve().parents[2]


def test_plan_is_seeds_x_configs_x_grid_points_in_order(workdir: Path) -> None:
    (workdir / "configs" / "other.yaml").write_text((workdir / "configs" / "tiny.yaml").read_text())
    spec = write_spec(workdir, """
        configs: ["configs/{tiny,other}.yaml", configs/*.yaml]
        exclude: [configs/nothing*.yaml]
        seeds: [1, 0]
        overrides: {train.epochs: 1}
        grid: [{}, {train.lr: [0.1, 0.2]}, {train.lr: [0.2]}]
        output_root: out
    """)
    plan = plan_sweep(load_spec(spec))
    assert plan.configs == ["configs/tiny.yaml", "configs/other.yaml"]  # each once, in listing order
    assert plan.grid_points == [{}, {"train.lr": "0.1"}, {"train.lr": "0.2"}]  # the repeated point once
    assert len(plan.runs) == 2 * 2 * 3
    assert [r.seed for r in plan.runs] == [1] * 6 + [0] * 6
    first = plan.runs[1]
    assert first.config == "configs/tiny.yaml" and first.overrides == {"train.epochs": "1", "train.lr": "0.1"}
    assert first.label == f"tiny/{run_leaf(1, {'train.epochs': 1, 'train.lr': 0.1})}"  # text or value: one name
    assert first.run_dir == workdir / "out" / first.label
    assert first.train_args("resume") == ["train", "configs/tiny.yaml", "train.epochs=1", "train.lr=0.1",
                                          "train.seed=1", f"output_dir=out/{first.label}", "resume=true"]
    assert first.command("restart")[:3] == [sys.executable, "-m", "pckd"] and first.command("restart")[-1] == "overwrite=true"
    assert first.command(gpus=4)[1:6] == ["-m", "pckd", "torchrun", "--standalone", "--nproc_per_node=4"]
    assert first.command(gpus=4)[6:] == first.train_args()


def test_glob_without_match_and_folder_collision_are_refused(workdir: Path) -> None:
    with pytest.raises(UserError, match=r"config glob 'configs/kd/\*.yaml' matches no file"):
        plan_sweep(load_spec(write_spec(workdir, "configs: [configs/kd/*.yaml]\n")))
    (workdir / "configs" / "tiny.yml").write_text("method: ce\n")
    with pytest.raises(UserError, match="map to one run folder"):
        plan_sweep(load_spec(write_spec(workdir, "configs: [configs/tiny.*]\n")))


def test_check_plan_names_the_run_and_the_bad_key(workdir: Path) -> None:
    plan = plan_sweep(load_spec(write_spec(workdir, "configs: [configs/tiny.yaml]\ngrid: {train.lrr: [0.1]}\n")))
    with pytest.raises(UserError) as info:
        check_plan(plan, progress=False)
    message = str(info.value)
    assert message.startswith("sweep run tiny/seed0-lrr=0.1-") and "train.lrr" in message and "\n" not in message


def test_check_plan_warns_about_missing_teachers_and_changed_configs(workdir: Path) -> None:
    (workdir / "configs" / "kd.yaml").write_text(
        "method: kd\nteacher: {arch: resnet8, checkpoint: teachers/t.pt}\nstudent: {arch: resnet8}\n"
        "data: {name: digits}\n")
    plan = plan_sweep(load_spec(write_spec(workdir, "configs: [configs/*.yaml]\noutput_root: out\n")))
    tiny = next(r for r in plan.runs if r.config.endswith("tiny.yaml"))
    tiny.run_dir.mkdir(parents=True)
    (tiny.run_dir / "config.yaml").write_text("method: ce\ntrain: {lr: 0.9, seed: 0}\noutput_dir: x\n")
    lines: list[str] = []
    check_plan(plan, progress=False, warn=lines.append)
    assert len(lines) == 2
    assert lines[0].startswith("teacher checkpoint(s) not found: teachers/t.pt (1 run);")
    assert lines[1].startswith("1 run folder(s) hold a run of a different config") and "tiny/seed0 (train.lr)" in lines[1]


def test_dry_run_prints_runs_folders_and_commands_and_writes_nothing(workdir: Path) -> None:
    spec = write_spec(workdir, "configs: [configs/tiny.yaml]\nseeds: [0, 1]\ngrid: {train.lr: [0.1, 0.2]}\n"
                               "output_root: out\nlocal: {parallel: 2, threads: 1}\n")
    resumable = plan_sweep(load_spec(spec)).runs[1]
    resumable.run_dir.mkdir(parents=True)
    (resumable.run_dir / "last.pt").write_bytes(b"checkpoint")
    lines: list[str] = []
    assert sweep_command(spec, SweepOptions(overrides=["train.epochs=1"]), dry_run=True, echo=lines.append) == 0
    text = "\n".join(lines)
    assert lines[0] == f"sweep spec ({spec}): 4 runs = 1 config x 2 grid points x 2 seeds"
    assert "executor local, 2 runs at a time on the CPU, 1 CPU thread each; retries 2" in lines[1]
    for run in plan_sweep(load_spec(spec)).runs:  # the override is part of the names: all are new runs
        leaf = run_leaf(run.seed, {"train.epochs": 1, **run.overrides})
        command = (f"python -m pckd train configs/tiny.yaml train.epochs=1 train.lr={run.overrides['train.lr']} "
                   f"train.seed={run.seed} output_dir=out/tiny/{leaf}")
        assert f"[pending] out/tiny/{leaf}\n    {command}\n" in text + "\n"
    assert lines[-1] == "4 pending; 4 would start"
    assert sorted(p.name for p in (workdir / "out" / "tiny").iterdir()) == [resumable.run_dir.name]  # nothing new
    lines.clear()
    sweep_command(spec, SweepOptions(), dry_run=True, echo=lines.append)  # without the override: it is resumable
    assert f"[resumable] out/{resumable.label}" in lines
    assert lines[lines.index(f"[resumable] out/{resumable.label}") + 1].endswith(" resume=true")


# ---- the specs shipped for the paper ---------------------------------------------------------------------
SHIPPED = sorted((ROOT / "sweeps").glob("*.yaml"))


def test_every_paper_table_has_a_spec() -> None:
    names = {p.stem for p in SHIPPED}
    assert {"table1", "table2", "table5", "table6", "table7", "table8", "table9", "fig5", "table3_imagenet"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_spec_globs_match_configs_and_plan_resolves(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every glob matches existing configs under configs/ and the plan builds. Runs with overrides are resolved
    here; a config run as it is, is resolved by tests/test_configs.py (every file under configs/), so resolving
    it again would only cost time (the specs of up to 16 configs are resolved in full anyway)."""
    monkeypatch.chdir(ROOT)
    spec = load_spec(path.relative_to(ROOT))
    plan = plan_sweep(spec)
    assert plan.runs and spec.output_root == Path("runs/paper")
    for config in plan.configs:
        assert config.startswith("configs/") and (ROOT / config).is_file()
    if len(plan.configs) <= 16 or any(run.overrides for run in plan.runs):
        check_plan(plan, progress=False, warn=lambda line: None)  # raises on a bad key or value


def test_table1_spec_covers_the_rows_and_columns_it_documents(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    plan = plan_sweep(load_spec("sweeps/table1.yaml"))
    pairs = {Path(c).stem for c in plan.configs}
    assert pairs == {"wrn_40_2-wrn_16_2", "wrn_40_2-wrn_40_1", "resnet56-resnet20", "resnet110-resnet20",
                     "resnet110-resnet32", "resnet32x4-resnet8x4", "vgg13-vgg8"}
    methods = {str(Path(c).parent.relative_to("configs/cifar100")) for c in plan.configs}
    assert len(methods) == 20 and {"kd", "pckd", "pckd/wo_kd", "fsp", "crd", "dkd", "sskd/e240_step",
                                   "mld/e240_step"} <= methods
    assert not {"ls", "lskd"} & methods  # the paper's LSKD has no public code: never filled by another method
    assert len(plan.configs) == 20 * 7 - 1  # FSP has no wrn_40_2 -> wrn_40_1 config (NA in the paper)
    assert {r.seed for r in plan.runs} == {0, 1, 2}


def test_fig5_grid_runs_the_default_point_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    plan = plan_sweep(load_spec("sweeps/fig5.yaml"))
    assert len(plan.grid_points) == 17 and plan.grid_points[0] == {}
    assert all(len(point) <= 1 for point in plan.grid_points)
    defaults = {"pckd.ccc_weight": 0.05, "pckd.fa_weight": 20, "pckd.ca_weight": 1, "pckd.gamma": (1.005, 1.015)}
    for point in plan.grid_points[1:]:
        ((key, value),) = point.items()
        default = defaults[key]
        assert value not in (default if isinstance(default, tuple) else (default,))


def test_local_sweeps_do_not_need_submitit(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit now raises ImportError
    spec = write_spec(workdir, "configs: [configs/tiny.yaml]\n")
    assert sweep_command(spec, SweepOptions(), dry_run=True, echo=lambda line: None) == 0
    with pytest.raises(UserError, match=r"the slurm executor needs submitit; install it with pip install "
                                        r"'pckd\[slurm\]'"):
        sweep_command(spec, SweepOptions(executor="slurm"), echo=lambda line: None)
