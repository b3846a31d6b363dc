"""A sweep's plan: the runs a spec stands for (config x grid point x seed), their folders and commands.

Runs are ordered seed by seed (then config, then grid point), so a table fills in for the first seed before
the second one starts.
"""

from __future__ import annotations

import glob
import itertools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pckd.errors import UserError
from pckd.sweep.naming import config_id, override_strings, run_leaf
from pckd.sweep.spec import SweepSpec

MODES = ("fresh", "resume", "restart")  # restart: the folder holds a run that left no checkpoint
# Keys that differ between the runs of one sweep by design, or that the sweep sets: never "a changed config".
_UNCOMPARED = ("output_dir", "resume", "overwrite", "train.seed")


@dataclass
class PlannedRun:
    """One run of a sweep."""

    config: str  # the config file as matched (relative to ``cwd`` when under it)
    seed: int
    overrides: dict[str, Any]  # the spec's fixed overrides and this grid point (not the seed)
    grid_keys: tuple[str, ...]  # which of ``overrides`` come from the grid
    folder: Path  # the run folder as written in commands (relative to ``cwd`` when the output root is)
    cwd: Path  # absolute: the directory the run starts in (relative paths of the config resolve from it)
    label: str  # the folder relative to the output root, e.g. cifar100/kd/a-b/seed0

    @property
    def run_dir(self) -> Path:
        """The run folder, absolute."""
        return self.folder if self.folder.is_absolute() else self.cwd / self.folder

    def train_args(self, mode: str = "fresh") -> list[str]:
        """The arguments of ``pckd`` that run (``fresh``), continue (``resume``) or start over (``restart``)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        extra = {"fresh": [], "resume": ["resume=true"], "restart": ["overwrite=true"]}[mode]
        return ["train", self.config, *override_strings(self.overrides), f"train.seed={self.seed}",
                f"output_dir={self.folder}", *extra]

    def command(self, mode: str = "fresh", gpus: int = 1, python: list[str] | None = None) -> list[str]:
        """The full command line: ``python -m pckd train ...`` (``python``: the interpreter command, this one by
        default); with ``gpus`` > 1 under ``pckd torchrun`` on one node."""
        python = list(python) if python else [sys.executable]
        if gpus > 1:  # pckd torchrun: torchrun that ends with pckd's exit codes (0 after SIGTERM once saved)
            return [*python, "-m", "pckd", "torchrun", "--standalone", f"--nproc_per_node={gpus}",
                    *self.train_args(mode)]
        return [*python, "-m", "pckd", *self.train_args(mode)]


@dataclass
class Plan:
    """A spec's runs, in launch order."""

    spec: SweepSpec
    runs: list[PlannedRun]
    configs: list[str]
    grid_points: list[dict[str, Any]]
    cwd: Path

    @property
    def output_root(self) -> Path:
        root = self.spec.output_root
        return root if root.is_absolute() else self.cwd / root


def expand_braces(pattern: str) -> list[str]:
    """``a/{kd,dkd}/{x,y}.yaml`` -> the four patterns (shell-style alternatives, nesting allowed)."""
    open_at = pattern.find("{")
    if open_at < 0:
        return [pattern]
    depth, options, start = 0, [], open_at + 1
    for i in range(open_at, len(pattern)):
        char = pattern[i]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                options.append(pattern[start:i])
                head, tail = pattern[:open_at], pattern[i + 1:]
                out: list[str] = []
                for option in options:
                    for expanded in expand_braces(head + option + tail):
                        if expanded not in out:
                            out.append(expanded)
                return out
        elif char == "," and depth == 1:
            options.append(pattern[start:i])
            start = i + 1
    return [pattern]  # an unclosed brace is a literal character, as in a shell


def _glob(pattern: str, cwd: Path) -> list[str]:
    matches: list[str] = []
    for expanded in expand_braces(pattern):
        if os.path.isabs(expanded):
            found = glob.glob(expanded, recursive=True)
        else:
            found = glob.glob(expanded, root_dir=cwd, recursive=True)
        matches += sorted(f for f in found if (cwd / f).is_file())
    return matches


def match_configs(spec: SweepSpec, cwd: Path) -> list[str]:
    """The config files of ``spec``: every glob must match at least one file; excluded ones are dropped."""
    excluded = {os.path.normpath(f) for pattern in spec.exclude for f in _glob(pattern, cwd)}
    configs: list[str] = []
    seen: set[str] = set()
    for pattern in spec.configs:
        found = _glob(pattern, cwd)
        if not found:
            raise UserError(f"sweep spec '{spec.path}': config glob '{pattern}' matches no file under '{cwd}'; "
                            f"fix the pattern or run from the folder holding configs/")
        for path in found:
            key = os.path.normpath(path)
            if key not in seen and key not in excluded:
                seen.add(key)
                configs.append(key)
    if not configs:
        raise UserError(f"sweep spec '{spec.path}': every matched config is excluded; nothing to run")
    return configs


def grid_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """The union of the cartesian products of the grid entries, each override set once, in spec order."""
    points: list[dict[str, Any]] = []
    seen: set[tuple[str, ...]] = set()
    for axes in spec.grid:
        keys = list(axes)
        for values in itertools.product(*(axes[k] for k in keys)):
            point = dict(zip(keys, values))
            canonical = tuple(override_strings(point))
            if canonical not in seen:
                seen.add(canonical)
                points.append(point)
    return points


def plan_sweep(spec: SweepSpec, cwd: Path | None = None) -> Plan:
    """Expand ``spec`` into runs (no config is resolved here: see :func:`check_plan`)."""
    cwd = Path(os.path.abspath(cwd or Path.cwd()))
    configs = match_configs(spec, cwd)
    points = grid_points(spec)
    runs: list[PlannedRun] = []
    by_folder: dict[Path, PlannedRun] = {}
    for seed in spec.seeds:
        for config in configs:
            for point in points:
                overrides = {**spec.overrides, **point}
                label = f"{config_id(Path(config), cwd)}/{run_leaf(seed, overrides)}"
                run = PlannedRun(config=config, seed=seed, overrides=overrides, grid_keys=tuple(point),
                                 folder=spec.output_root / label, cwd=cwd, label=label)
                other = by_folder.get(run.run_dir)
                if other is not None:
                    raise UserError(f"sweep spec '{spec.path}': configs '{other.config}' and '{config}' map to one "
                                    f"run folder '{run.folder}'; rename one of them or exclude it")
                by_folder[run.run_dir] = run
                runs.append(run)
    return Plan(spec=spec, runs=runs, configs=configs, grid_points=points, cwd=cwd)


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def _teacher_exists(checkpoint: str, cwd: Path) -> bool:
    """A teacher path as a run will read it: ``zoo:NAME`` in the teacher cache, other ``scheme:`` paths
    assumed present, files relative to the sweep's folder."""
    from pckd.models.published.cache import PREFIX, teacher_file

    if checkpoint.startswith(PREFIX):
        return teacher_file(checkpoint[len(PREFIX):]).is_file()
    return ":" in checkpoint or (cwd / checkpoint).exists()


def _changed_keys(planned: dict[str, Any], run_dir: Path) -> list[str]:
    """Keys (present in both) whose value in the run's saved config.yaml differs from the plan's."""
    import yaml

    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []
    if not isinstance(saved, dict):
        return []
    flat = _flat(saved)
    return sorted(key for key, value in planned.items()
                  if key in flat and not key.startswith(_UNCOMPARED) and flat[key] != value)


def _uses_teacher(cfg: Any) -> bool:
    """Whether the run will load its teacher (CE-only ablations name one they never read)."""
    from pckd.config.load import uses_teacher

    return uses_teacher(cfg)


def check_plan(plan: Plan, progress: bool = True, warn: Callable[[str], None] | None = None) -> None:
    """Resolve every config with its overrides (as ``pckd train`` would) so a bad key or value stops the sweep
    before anything starts. ``warn`` gets one line per thing worth knowing: teacher checkpoints that do not
    exist yet, and run folders whose saved config differs from the plan (the config file changed since)."""
    from omegaconf import OmegaConf
    from tqdm import tqdm

    from pckd.config import load_config

    groups: dict[tuple[str, tuple[str, ...]], list[PlannedRun]] = {}
    for run in plan.runs:
        groups.setdefault((run.config, tuple(override_strings(run.overrides))), []).append(run)
    missing: dict[str, int] = {}
    changed: list[str] = []
    items = tqdm(groups.items(), desc="checking configs", unit="config", leave=False,
                 disable=not progress or len(groups) < 20)
    for (config, overrides), runs in items:
        try:
            cfg = load_config(plan.cwd / config, [*overrides, f"train.seed={runs[0].seed}"])
        except UserError as exc:
            shown = f" with {' '.join(overrides)}" if overrides else ""
            raise UserError(f"sweep run {runs[0].label} ({config}{shown}): {exc}") from None
        checkpoint = getattr(getattr(cfg, "teacher", None), "checkpoint", None)
        if isinstance(checkpoint, str) and checkpoint and _uses_teacher(cfg) and not _teacher_exists(checkpoint, plan.cwd):
            missing[checkpoint] = missing.get(checkpoint, 0) + len(runs)
        planned = _flat(OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True))
        for run in runs:
            if (run.run_dir / "config.yaml").is_file():
                keys = _changed_keys(planned, run.run_dir)
                if keys:
                    changed.append(f"{run.label} ({', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''})")
    if warn is None:
        return
    if missing:
        shown = ", ".join(f"{path} ({n} run{'s' * (n > 1)})" for path, n in list(missing.items())[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        warn(f"teacher checkpoint(s) not found: {shown}{more}; runs that need a teacher will stop with exit 2 "
             f"until it exists (train it, or 'pckd teachers fetch NAME' for zoo:NAME)")
    if changed:
        warn(f"{len(changed)} run folder(s) hold a run of a different config than the plan now gives (the config "
             f"file changed since), e.g. {changed[0]}; the sweep keeps them as they are: move a folder away to "
             f"rerun it")
