"""Sweep specs: what they accept, and one clear line (exit 2) for what they do not."""

from __future__ import annotations

from pathlib import Path

import pytest

from pckd.cli import main
from pckd.errors import UserError
from pckd.sweep.spec import load_spec, with_command_line

from .conftest import write_spec


def test_full_spec_is_read(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, """
        name: demo
        configs: configs/*.yaml
        seeds: [3, 1]
        overrides: {train: {epochs: 2}, data.classes: 10}
        grid: [{}, {pckd.fa_weight: [10, 20]}]
        output_root: out
        retries: 0
        executor: slurm
        local: {parallel: 2, threads: auto}
        slurm: {partition: gpu, gpus: 2, cpus: 4, mem_gb: 16, time: "1-02:30:00", account: proj,
                setup: ["module load cuda"], additional: {exclude: node1}}
    """))
    assert spec.name == "demo" and spec.configs == ["configs/*.yaml"] and spec.seeds == [3, 1]
    assert spec.overrides == {"train.epochs": "2", "data.classes": "10"}  # text, read against the schema later
    assert spec.grid == [{}, {"pckd.fa_weight": ["10", "20"]}]
    assert spec.output_root == Path("out") and spec.retries == 0 and spec.executor == "slurm"
    assert (spec.local.parallel, spec.local.threads) == (2, None)
    assert spec.slurm.time == 24 * 60 + 2 * 60 + 30 and spec.slurm.gpus == 2 and spec.slurm.partition == "gpu"
    assert spec.slurm.setup == ["module load cuda"] and spec.slurm.additional == {"exclude": "node1"}


def test_defaults_and_list_form_of_overrides(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, "configs: [a.yaml]\noverrides: [train.epochs=3, 'pckd.preview.mode=off']\n",
                                name="mine.yaml"))
    assert spec.name == "mine" and spec.seeds == [0] and spec.grid == [{}] and spec.retries == 2
    assert spec.output_root == Path("runs/sweeps/mine") and spec.executor == "local"
    assert spec.overrides == {"train.epochs": "3", "pckd.preview.mode": "off"}


@pytest.mark.parametrize("value, minutes", [(90, 90), ("90", 90), ("10:30", 11), ("02:00:00", 120),
                                            ("1-00", 1440), ("1-01:30", 1530), ("2-00:00:01", 2881)])
def test_slurm_time_formats(tmp_path: Path, value: object, minutes: int) -> None:
    text = f"configs: [a.yaml]\nslurm: {{time: {value!r}}}\n" if isinstance(value, str) else \
        f"configs: [a.yaml]\nslurm: {{time: {value}}}\n"
    assert load_spec(write_spec(tmp_path, text)).slurm.time == minutes


@pytest.mark.parametrize("body, expected", [
    ("seeds: [0]\n", "key 'configs' is missing"),
    ("configs: [a.yaml]\nseed: [0]\n", "key 'seed' is unknown; did you mean 'seeds'?"),
    ("configs: [a.yaml]\nseeds: [0, zero]\n", "key 'seeds' must be a list of distinct integers, got [0, 'zero']"),
    ("configs: [a.yaml]\nseeds: [1, 1]\n", "key 'seeds' must be a list of distinct integers"),
    ("configs: []\n", "key 'configs' must be a glob or a non-empty list of globs"),
    ("configs: [a.yaml]\ngrid: {pckd.fa_weight: 10}\n", "key 'grid.pckd.fa_weight' must be a non-empty list"),
    ("configs: [a.yaml]\ngrid: {pckd.fa_weight: [10, 10]}\n", "lists a value twice"),
    ("configs: [a.yaml]\ngrid: {train.seed: [1, 2]}\n", "sets 'train.seed', which the sweep sets itself; list the seeds"),
    ("configs: [a.yaml]\noverrides: {output_dir: x}\n", "set 'output_root:' instead"),
    ("configs: [a.yaml]\noverrides: {train.lr: 0.1}\ngrid: {train.lr: [0.1, 0.2]}\n", "which 'overrides' also sets"),
    ("configs: [a.yaml]\nexecutor: pbs\n", "key 'executor' is 'pbs'; choose local or slurm"),
    ("configs: [a.yaml]\nretries: -1\n", "key 'retries' must be an integer >= 0"),
    ("configs: [a.yaml]\nslurm: {gpu: 1}\n", "key 'slurm.gpu' is unknown; did you mean 'gpus'?"),
    ("configs: [a.yaml]\nslurm: {time: soon}\n", "key 'slurm.time' must be minutes or HH:MM:SS, got 'soon'"),
    ("configs: [a.yaml]\nlocal: {parallel: 0}\n", "key 'local.parallel' must be an integer >= 1, got 0"),
    ("configs: [a.yaml]\nname: 'a b'\n", "key 'name' must be a short word"),
    ("- just\n- a list\n", "must be a mapping of keys"),
    ("configs: [a.yaml\n", "is not valid YAML"),
])
def test_bad_spec_is_one_line_naming_the_key(tmp_path: Path, body: str, expected: str) -> None:
    path = write_spec(tmp_path, body)
    with pytest.raises(UserError) as info:
        load_spec(path)
    message = str(info.value)
    assert expected in message and "\n" not in message and str(path) in message


def test_command_line_choices_override_the_spec(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, "configs: [a.yaml]\noverrides: {train.epochs: 240}\n"
                                          "grid: {train.lr: [0.1, 0.2]}\n"))
    mine = with_command_line(spec, ["train.epochs=1", "data.classes=10"], seeds=[5], output_root="elsewhere",
                             executor="slurm", parallel=3)
    assert mine.overrides == {"train.epochs": "1", "data.classes": "10"} and mine.seeds == [5]
    assert mine.output_root == Path("elsewhere") and mine.executor == "slurm" and mine.local.parallel == 3
    with pytest.raises(UserError, match=r"override 'train\.lr' is swept by the grid"):
        with_command_line(spec, ["train.lr=0.3"])
    with pytest.raises(UserError, match="override 'resume' is set by the sweep itself"):
        with_command_line(spec, ["resume=true"])


def test_cli_bad_spec_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_spec(tmp_path, "configs: [a.yaml]\nsedes: [0]\n")
    assert main(["sweep", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err == f"pckd: error: sweep spec '{path}': key 'sedes' is unknown; did you mean 'seeds'?\n"
    assert main(["sweep", "status", str(tmp_path / "missing.yaml")]) == 2
    assert "sweep spec" in capsys.readouterr().err
