"""Read a sweep spec (YAML): config globs x seeds x override grids, an output root and an executor.

Every problem is one `UserError` line naming the spec file, the key, the value and the fix. Relative paths in a
spec (config globs, ``output_root``) are relative to the current directory, as the paths inside the configs
themselves are (``teacher.checkpoint``, ``data.root``).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pckd.config.yaml_source import parse_override_layer, parse_text
from pckd.errors import UserError
from pckd.sweep.naming import format_value

# Keys the sweep sets itself: a spec (or the command line) may not override them.
RESERVED_KEYS = {
    "train.seed": "list the seeds under 'seeds:' instead",
    "output_dir": "set 'output_root:' instead (each run gets its own folder under it)",
    "resume": "the sweep resumes unfinished runs by itself",
    "overwrite": "the sweep restarts a run only when it left no checkpoint",
}
_KEY_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass
class LocalOptions:
    """How the local executor runs: ``parallel`` runs at a time (None: one per visible GPU, else 1) with
    ``threads`` CPU threads each (None: the machine's cores split between the parallel runs)."""

    parallel: int | None = None
    threads: int | None = None


@dataclass
class SlurmOptions:
    """Resources of one Slurm job (one run); passed to submitit's Slurm executor."""

    partition: str | None = None
    gpus: int = 1  # GPUs of the run's node (> 1: the run is launched with pckd torchrun on that node)
    cpus: int = 8  # CPU cores per job (also the run's torch threads)
    mem_gb: float = 32.0
    time: int = 1440  # minutes; a spec may write "HH:MM:SS" or "D-HH:MM:SS"
    array_parallelism: int = 64  # jobs of the array running at once
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    setup: list[str] = field(default_factory=list)  # shell lines run before the job (module load ..., source ...)
    additional: dict[str, Any] = field(default_factory=dict)  # any other #SBATCH flag, e.g. {exclude: node12}
    max_timeouts: int = 3  # times a job hitting the time limit is requeued (preemptions requeue without limit)
    signal_delay_s: int = 120  # the warning signal comes this long before the time limit


@dataclass
class SweepSpec:
    """A parsed sweep spec."""

    path: Path
    name: str
    configs: list[str]  # glob patterns ({a,b} alternatives allowed)
    exclude: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    overrides: dict[str, Any] = field(default_factory=dict)  # applied to every run
    grid: list[dict[str, list[Any]]] = field(default_factory=lambda: [{}])  # union of cartesian products
    output_root: Path = Path("runs/sweeps")
    retries: int = 2  # a failed run is retried this many times (in all, over every invocation)
    executor: str = "local"
    local: LocalOptions = field(default_factory=LocalOptions)
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    description: str = ""


_TOP_KEYS = {f.name for f in dataclasses.fields(SweepSpec)} - {"path"}


def _fail(path: Path, key: str, message: str) -> UserError:
    return UserError(f"sweep spec '{path}': key '{key}' {message}")


def _suggest(name: str, options: set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(options), n=1, cutoff=0.5)
    return f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(sorted(options))}"


def _str_list(path: Path, key: str, value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) and v.strip() for v in items):
        raise _fail(path, key, f"must be a glob or a non-empty list of globs, got {value!r}; "
                               f"write e.g. {key}: [configs/cifar100/kd/*.yaml]")
    return items


def _positive_int(path: Path, key: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(path, key, f"must be an integer >= {minimum}, got {value!r}")
    return value


def _check_key(path: Path, where: str, key: Any) -> str:
    if not isinstance(key, str) or not _KEY_PATTERN.match(key):
        raise _fail(path, where, f"holds {key!r}, which is not a dotted config key; write e.g. pckd.fa_weight")
    if key in RESERVED_KEYS:
        raise _fail(path, where, f"sets '{key}', which the sweep sets itself; {RESERVED_KEYS[key]}")
    return key


def _overrides(path: Path, key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, list) and all(isinstance(v, str) and "=" in v for v in value):  # ["a.b=1", ...]
        return {_check_key(path, key, k): v for k, v in _flatten(parse_override_layer(value)).items()}
    if not isinstance(value, dict):
        raise _fail(path, key, f"must map config keys to values, got {value!r}; write e.g. {key}: {{train.epochs: 2}}")
    return {_check_key(path, key, k): v for k, v in _flatten(value).items()}


def _flatten(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{train: {epochs: 2}}`` and ``{train.epochs: 2}`` both -> ``{"train.epochs": 2}``."""
    out: dict[str, Any] = {}
    for key, item in value.items():
        full = f"{prefix}{key}"
        if isinstance(item, dict) and item:
            out.update(_flatten(item, f"{full}."))
        else:
            out[full] = item
    return out


def _grid(path: Path, value: Any) -> list[dict[str, list[Any]]]:
    if value is None:
        return [{}]
    entries = value if isinstance(value, list) else [value]
    if not entries:
        raise _fail(path, "grid", "is an empty list; leave it out to run each config as it is")
    grids: list[dict[str, list[Any]]] = []
    for i, entry in enumerate(entries):
        where = "grid" if not isinstance(value, list) else f"grid[{i}]"
        if entry is None:
            entry = {}
        if not isinstance(entry, dict):
            raise _fail(path, where, f"must map config keys to lists of values, got {entry!r}; "
                                     f"write e.g. grid: {{pckd.fa_weight: [10, 20, 30]}}")
        axes: dict[str, list[Any]] = {}
        for key, values in entry.items():
            _check_key(path, where, key)
            if not isinstance(values, list) or not values:
                raise _fail(path, f"{where}.{key}", f"must be a non-empty list of values, got {values!r}; "
                                                    f"write e.g. {key}: [10, 20, 30]")
            if len({format_value(v) for v in values}) != len(values):
                raise _fail(path, f"{where}.{key}", f"lists a value twice ({values!r}); list each value once")
            axes[key] = values
        grids.append(axes)
    return grids


def _minutes(path: Path, value: Any) -> int:
    """Slurm's time formats: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS (or an int of minutes)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    seconds = 0
    if isinstance(value, str) and re.fullmatch(r"(\d+-)?\d+(:\d+){0,2}", value.strip()):
        text = value.strip()
        days, _, clock = text.rpartition("-")
        parts = [int(p) for p in clock.split(":")]
        if days:  # D-HH[:MM[:SS]]
            parts += [0] * (3 - len(parts))
            seconds = int(days) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]
        else:  # MM, MM:SS or HH:MM:SS
            scale = {1: [60], 2: [60, 1], 3: [3600, 60, 1]}[len(parts)]
            seconds = sum(p * f for p, f in zip(parts, scale))
    if seconds <= 0:
        raise _fail(path, "slurm.time", f"must be minutes or HH:MM:SS, got {value!r}; write e.g. time: '24:00:00'")
    return -(-seconds // 60)


def _options(path: Path, section: str, value: Any, cls: type) -> Any:
    if value is None:
        return cls()
    if not isinstance(value, dict):
        raise _fail(path, section, f"must be a mapping, got {value!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, item in value.items():
        if key not in names:
            raise _fail(path, f"{section}.{key}", f"is unknown; {_suggest(str(key), names)}")
        where = f"{section}.{key}"
        if key in ("parallel", "threads"):
            kwargs[key] = None if item in (None, "auto") else _positive_int(path, where, item)
        elif key == "time":
            kwargs[key] = _minutes(path, item)
        elif key in ("gpus",):
            kwargs[key] = _positive_int(path, where, item, minimum=0)
        elif key in ("cpus", "array_parallelism", "signal_delay_s"):
            kwargs[key] = _positive_int(path, where, item)
        elif key == "max_timeouts":
            kwargs[key] = _positive_int(path, where, item, minimum=0)
        elif key == "mem_gb":
            if isinstance(item, bool) or not isinstance(item, (int, float)) or item <= 0:
                raise _fail(path, where, f"must be a positive number of GB, got {item!r}")
            kwargs[key] = float(item)
        elif key == "setup":
            if not isinstance(item, list) or not all(isinstance(s, str) for s in item):
                raise _fail(path, where, f"must be a list of shell lines, got {item!r}")
            kwargs[key] = item
        elif key == "additional":
            if not isinstance(item, dict):
                raise _fail(path, where, f"must map sbatch flags to values, got {item!r}")
            kwargs[key] = item
        else:  # partition, account, qos, constraint
            if item is not None and not isinstance(item, str):
                raise _fail(path, where, f"must be a string, got {item!r}")
            kwargs[key] = item
    return cls(**kwargs)


def load_spec(path: str | Path) -> SweepSpec:
    """Parse and check the sweep spec at ``path`` (nothing is globbed or resolved yet)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sweep spec '{path}' not found; pass a YAML file such as sweeps/table1.yaml")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"sweep spec '{path}'{where} is not valid YAML ({getattr(exc, 'problem', exc)}); "
                        f"fix the syntax") from None
    if not isinstance(data, dict):
        raise UserError(f"sweep spec '{path}' must be a mapping of keys (configs, seeds, grid, ...), "
                        f"not {type(data).__name__}")
    # Override values keep their text, as in a config file: the trainer reads each against its key's type.
    text_values = parse_text(path.read_text(), f"sweep spec '{path}'")
    for key in data:
        if key not in _TOP_KEYS:
            raise _fail(path, str(key), f"is unknown; {_suggest(str(key), _TOP_KEYS)}")
    if "configs" not in data:
        raise _fail(path, "configs", "is missing; list the config files to run, e.g. configs: [configs/cifar100/kd/*.yaml]")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise _fail(path, "name", f"must be a short word (letters, digits, _ . -), got {name!r}")
    seeds = data.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if (not isinstance(seeds, list) or not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds)
            or len(set(seeds)) != len(seeds)):
        raise _fail(path, "seeds", f"must be a list of distinct integers, got {seeds!r}; write e.g. seeds: [0, 1, 2]")
    retries = data.get("retries", 2)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise _fail(path, "retries", f"must be an integer >= 0, got {retries!r}")
    executor = data.get("executor", "local")
    if executor not in ("local", "slurm"):
        raise _fail(path, "executor", f"is {executor!r}; choose local or slurm")
    root = data.get("output_root", f"runs/sweeps/{name}")
    if not isinstance(root, str) or not root.strip():
        raise _fail(path, "output_root", f"must be a folder path, got {root!r}")
    description = data.get("description", "")
    overrides = _overrides(path, "overrides", text_values.get("overrides"))
    grid = _grid(path, text_values.get("grid"))
    for axes in grid:
        for key in axes:
            if key in overrides:
                raise _fail(path, "grid", f"sweeps '{key}', which 'overrides' also sets; keep it in one place")
    return SweepSpec(
        path=path, name=name, configs=_str_list(path, "configs", data["configs"]),
        exclude=_str_list(path, "exclude", data["exclude"]) if data.get("exclude") else [],
        seeds=seeds, overrides=overrides, grid=grid, output_root=Path(root).expanduser(), retries=retries,
        executor=executor, local=_options(path, "local", data.get("local"), LocalOptions),
        slurm=_options(path, "slurm", data.get("slurm"), SlurmOptions), description=str(description or ""))


def with_command_line(spec: SweepSpec, overrides: list[str], seeds: list[int] | None = None,
                      output_root: str | None = None, executor: str | None = None,
                      parallel: int | None = None) -> SweepSpec:
    """The spec with the command line's choices on top: ``key=value`` overrides for every run (they replace the
    spec's value of the same key), seeds, output root, executor and parallel runs."""
    extra = _flatten(parse_override_layer(overrides)) if overrides else {}
    for key in extra:
        if key in RESERVED_KEYS:
            raise UserError(f"override '{key}' is set by the sweep itself; {RESERVED_KEYS[key]}")
        if any(key in axes for axes in spec.grid):
            raise UserError(f"override '{key}' is swept by the grid of '{spec.path}'; drop the override or the grid axis")
    if seeds is not None and (not seeds or len(set(seeds)) != len(seeds)):
        raise UserError(f"--seeds {' '.join(map(str, seeds))}: give distinct integers, e.g. --seeds 0 1 2")
    if parallel is not None and parallel < 1:
        raise UserError(f"--parallel {parallel}: give a number of runs >= 1")
    local = dataclasses.replace(spec.local, parallel=parallel) if parallel is not None else spec.local
    return dataclasses.replace(
        spec, overrides={**spec.overrides, **extra}, seeds=list(seeds) if seeds is not None else spec.seeds,
        output_root=Path(output_root).expanduser() if output_root is not None else spec.output_root,
        executor=executor or spec.executor, local=local)
