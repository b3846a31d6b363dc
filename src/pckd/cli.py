"""The `pckd` command. Thin: parses arguments, calls library functions, turns UserErrors into one line + exit 2."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pckd.errors import PckdWarning, TrainingStopped, UserError

OVERRIDES_HELP = "key=value overrides, e.g. train.epochs=10 data.classes=10 pckd.preview.mode=off"
KEYS_EPILOG = """\
keys (key=value; 'pckd config CONFIG' prints them all resolved, 'pckd methods' lists every method's section):
  method                      ce, kd, pckd, ckd, ... (pckd methods)
  student.* / teacher.*       arch, checkpoint, trust_checkpoint, strict
  data.*                      name, root, classes, train_limit, test_limit, download, image_size, num_workers
  train.*                     epochs, batch_size, lr, schedule, milestones, seed, device, precision,
                              channels_last, compile, log_interval, on_nonfinite, checkpoint_every, progress
  output_dir, resume, overwrite
  <method>.*                  the method's hyper-parameters, e.g. kd.temperature, pckd.preview.mode
"""


def _cmd_train(args: argparse.Namespace) -> int:
    from pckd.config import load_config
    from pckd.engine.launch import run_training

    cfg = load_config(args.config, args.overrides)
    summary = run_training(cfg)
    if summary is not None:
        print(json.dumps(summary, indent=2))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from pckd.engine.eval_checkpoint import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, args.overrides)
    print(json.dumps(result, indent=2))
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from pckd.config import load_config
    from pckd.config.load import applicable_yaml

    print(applicable_yaml(load_config(args.config, args.overrides)), end="")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from pckd.models import list_models, model_summary

    with warnings.catch_warnings():  # torchvision's notes about future init defaults are noise here
        warnings.simplefilter("ignore", FutureWarning)
        rows = [model_summary(name, num_classes=args.num_classes) for name in list_models()]
    width = max(len("name"), *(len(r["name"]) for r in rows)) + 2
    print(f"{'name':<{width}} {'family':<14} {'params (M)':>10} {'feature dim':>11} {'input':>6}")
    for r in rows:
        print(f"{r['name']:<{width}} {r['family']:<14} {r['params'] / 1e6:>10.2f} {r['penultimate_dim']:>11} "
              f"{r['input_size']:>6}")
    print(f"\nparameter counts for {args.num_classes} classes; ImageNet models: any torchvision classifier as "
          f"'torchvision.<name>' (e.g. torchvision.resnet18)")
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    from pckd.methods.base import method_registry
    from pckd.params import settings_rows

    for name, spec in sorted(method_registry().items()):
        teacher = "teacher" if spec.cls.needs_teacher else "no teacher"
        print(f"{name:<12} {spec.summary} [{teacher}]")
        for key, default, allowed, doc in settings_rows(spec.params, name):
            rule = f"  [{allowed}]" if allowed else ""
            note = f"  # {doc}" if doc else ""
            print(f"    {key} = {default}{rule}{note}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from pckd.demo import run_demo

    run_demo(args.output_dir, epochs_scale=args.scale, methods=args.methods)
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    from pckd.engine.probe import run_probe, settings_file_overrides

    result = run_probe(args.checkpoint, settings_file_overrides(args.config) + list(args.overrides))
    print(json.dumps({k: v for k, v in result.items() if k != "epochs"}, indent=2))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from pckd.report import write_report

    plots = args.plot or []
    for kind, key in plots:
        if kind != "sensitivity":
            raise UserError(f"--plot {kind} {key}: unknown plot '{kind}'; available: sensitivity "
                            f"(e.g. --plot sensitivity pckd.fa_weight)")
    path = write_report(args.paths, args.output_dir, metric=args.metric, plots=not args.no_plots, echo=print,
                        published=not args.no_published)
    paper = path.with_name("paper.csv")
    beside = f", {paper}" if not args.no_published and paper.is_file() else ""
    curves = "" if args.no_plots else f" and the PNG curves in {path.parent}"
    print(f"wrote {path}, {path.with_name('report.csv')}{beside}{curves}")
    if plots:
        from pckd.report.sensitivity import write_sensitivity

        for _, key in plots:
            png = write_sensitivity(args.paths, args.output_dir, key, metric=args.metric, echo=print)
            print(f"wrote {png} and {png.with_suffix('.csv')}")
    return 0


def _cmd_torchrun(args: argparse.Namespace) -> int:
    from pckd.engine.torchrun import run_torchrun

    rest = list(args.rest)
    if not rest or rest[0] in ("-h", "--help"):
        print("usage: pckd torchrun [torchrun options] COMMAND [args]\n\n"
              "torchrun --OPTIONS -m pckd COMMAND ..., ending in one line and pckd's exit codes (130 after Ctrl-C,\n"
              "0 after SIGTERM, once the ranks saved their checkpoint). Example:\n"
              "  pckd torchrun --nproc_per_node=4 train configs/cifar100/kd/resnet32x4-resnet8x4.yaml")
        return 0 if rest else 2
    commands = ("train", "eval", "probe")
    at = next((i for i, a in enumerate(rest) if a in commands), len(rest))
    return run_torchrun(rest[:at], rest[at:])


def _cmd_sweep(args: argparse.Namespace) -> int:
    from pckd.sweep import SweepOptions, status_command, sweep_command

    spec, overrides = args.spec, list(args.overrides)
    showing_status = spec == "status" and overrides and not os.path.isfile("status")
    if showing_status:
        spec = overrides.pop(0)
    options = SweepOptions(overrides=overrides, seeds=args.seeds, output_root=args.output_root,
                           executor=args.executor, parallel=args.parallel)
    if showing_status:
        return status_command(spec, options)
    return sweep_command(spec, options, dry_run=args.dry_run, retry_failed=args.retry_failed)


def _cmd_export(args: argparse.Namespace) -> int:
    from pckd.engine.export import export_checkpoint

    path = export_checkpoint(args.checkpoint, args.output, args.overrides)
    print(f"wrote {path}")
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from pckd.analyze.command import run_analyze

    # Items with '=' are overrides unless they name an existing file or folder (a path may hold '=').
    overrides = [a for a in args.items if "=" in a and not os.path.exists(a)]
    inputs = [a for a in args.items if a not in overrides]
    result = run_analyze(inputs, args.figures, overrides, progress=sys.stderr.isatty())
    print(json.dumps(result, indent=2))
    return 0


def _cmd_teachers(args: argparse.Namespace) -> int:
    from pckd.teachers import command

    if args.action == "list":
        print(command.list_table())
    elif args.action == "path":
        if len(args.names) != 1:
            raise UserError("pckd teachers path takes one teacher name, e.g. 'pckd teachers path resnet32x4'")
        print(command.path_of(args.names[0]))
    else:
        rows = command.fetch_command(args.names, args.force, args.data_root, args.test_limit, sys.stderr.isatty())
        print(json.dumps(rows, indent=2))
    return 0


ANALYZE_EPILOG = """figures: centres (Fig. 1), difficulty (Fig. 7), tsne (Fig. 8), correlation, calibration
keys: analyze.classes=[0,1,...] analyze.checkpoint=best|last analyze.tsne_points=2000 analyze.difficulty=records|student
      analyze.difficulty_count=8 analyze.bins=15 analyze.teacher=PATH analyze.teacher_arch=NAME analyze.output_dir=DIR
      data.* / train.device / train.eval_batch_size as for 'pckd eval'; student.arch=NAME for foreign checkpoints
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pckd", description="Knowledge distillation of image classifiers.")
    from pckd import __version__

    parser.add_argument("--version", action="version", version=f"pckd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="train a teacher and distilled students on the embedded digits data")
    p.add_argument("--output-dir", default="runs/demo", help="where the demo runs go (default: runs/demo)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the demo's epochs (e.g. 0.2 for a smoke run)")
    p.add_argument("--methods", nargs="*", default=None,
                   help="student methods to run (default: ce kd pckd ckd; 'all' adds every baseline)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("train", help="train with a YAML config (teacher with method=ce, or a student)",
                       epilog=KEYS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML config file, e.g. configs/cifar100/kd/resnet32x4-resnet8x4.yaml")
    p.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on the test set", epilog=KEYS_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a pckd checkpoint (best.pt/last.pt) or any weights file with student.arch=...")
    p.add_argument("overrides", nargs="*", help="e.g. data.root=./data student.arch=resnet8x4")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("config", help="print the resolved config (only the keys that apply to the run)",
                       epilog=KEYS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser("models", help="list the model zoo with parameter counts")
    p.add_argument("--num-classes", type=int, default=100,
                   help="classes of the classifier the parameter counts are given for (default: 100)")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("methods", help="list the methods and their hyper-parameters")
    p.set_defaults(func=_cmd_methods)

    p = sub.add_parser("probe", help="train a linear classifier on a frozen checkpoint's features (Table IV)")
    p.add_argument("checkpoint", help="a pckd checkpoint, or any weights file with student.arch=...")
    p.add_argument("overrides", nargs="*",
                   help="e.g. data.name=imagefolder data.root=DIR data.image_size=32 probe.epochs=40")
    p.add_argument("--config", default=None,
                   help="a YAML file of data.* / probe.* keys, e.g. configs/transfer/stl10.yaml (overrides win)")
    p.set_defaults(func=_cmd_probe)

    p = sub.add_parser("report", help="tables (Markdown, CSV) and curves (PNG) from run directories")
    p.add_argument("paths", nargs="+", help="run directories, or folders searched recursively for them")
    p.add_argument("--output-dir", default="report", help="where report.md, report.csv and the PNGs go")
    p.add_argument("--metric", choices=["best", "last"], default="best",
                   help="top-1 of each run's best epoch (default, as the reference code reports) or its last")
    p.add_argument("--no-plots", action="store_true", help="write the tables only")
    p.add_argument("--no-published", action="store_true",
                   help="leave out the PCKD paper's published tables (measured | paper | difference) and paper.csv")
    p.add_argument("--plot", nargs=2, action="append", metavar=("KIND", "KEY"),
                   help="an extra figure: 'sensitivity KEY' draws top-1 against the value of config key KEY "
                        "(e.g. pckd.fa_weight) with error bars over seeds, as Fig. 5 (repeat for several keys)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("torchrun", help="torchrun with pckd's exit codes: pckd torchrun --nproc_per_node=N train CONFIG",
                       prefix_chars="\0")
    p.add_argument("rest", nargs=argparse.REMAINDER,
                   help="torchrun's options, then the pckd command: --nproc_per_node=4 train CONFIG key=value ...")
    p.set_defaults(func=_cmd_torchrun)

    p = sub.add_parser(
        "sweep", help="run a grid of trainings from a sweep spec, locally or on Slurm; 'pckd sweep status SPEC' "
                      "shows their states",
        description="pckd sweep SPEC [key=value ...] [--dry-run] runs every run of the spec that is not done yet "
                    "(finished runs are skipped, unfinished ones resumed, failed ones retried); "
                    "pckd sweep status SPEC [key=value ...] prints the state of each run. Give the same overrides "
                    "and --seeds to both: they are part of the runs' folder names.")
    p.add_argument("spec", help="sweep spec YAML, e.g. sweeps/table1.yaml (or 'status' followed by the spec)")
    p.add_argument("overrides", nargs="*",
                   help="key=value overrides for every run, e.g. train.epochs=1 data.classes=10 (put them before "
                        "the options)")
    p.add_argument("--dry-run", action="store_true", help="print the plan (runs, folders, commands); run nothing")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds instead of the spec's, e.g. --seeds 0")
    p.add_argument("--output-root", default=None, help="folder of the run folders instead of the spec's output_root")
    p.add_argument("--executor", choices=["local", "slurm"], default=None, help="instead of the spec's executor")
    p.add_argument("--parallel", type=int, default=None,
                   help="local executor: runs at a time (default: one per visible GPU, else 1)")
    p.add_argument("--retry-failed", action="store_true",
                   help="forget past failures, so runs that failed more than the spec's retries run again")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("export", help="export a checkpoint's weights to safetensors")
    p.add_argument("checkpoint", help="a pckd checkpoint (best.pt/last.pt) or any weights file")
    p.add_argument("output", help="the .safetensors file to write (its folder is created)")
    p.add_argument("overrides", nargs="*", help="student.trust_checkpoint=true for a trusted pickle file")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("teachers", help="published teachers: list, fetch NAME... | all, path NAME (zoo:NAME in configs)",
                       epilog="the cache is $PCKD_HOME/teachers (default ~/.cache/pckd); PCKD_TEACHERS_URL names a "
                       "mirror (a base URL or a local folder holding cifar_teachers.tar)")
    p.add_argument("action", choices=["list", "fetch", "path"])
    p.add_argument("names", nargs="*", help="teacher names (fetch: or 'all')")
    p.add_argument("--force", action="store_true", help="fetch again even if the cached file is intact")
    p.add_argument("--data-root", default="./data",
                   help="after a fetch, evaluate each teacher on the CIFAR-100 test set here if present (default ./data)")
    p.add_argument("--test-limit", type=int, default=None, help="evaluate on the first N test images only")
    p.set_defaults(func=_cmd_teachers)

    p = sub.add_parser("analyze", help="the paper's figures (centres, difficulty, t-SNE) and correlation/calibration "
                       "plots of runs", epilog=ANALYZE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("items", nargs="+", metavar="RUN_OR_CHECKPOINT [key=value]",
                   help="run folders or checkpoints (several: side by side), then key=value overrides")
    p.add_argument("--figures", default=None, help="comma-separated names (default: all that apply)")
    p.set_defaults(func=_cmd_analyze)
    parser.commands = dict(sub.choices)  # type: ignore[attr-defined]
    return parser


def _say(line: str) -> None:
    """Write one line to stderr in a single write, so lines from several ranks sharing a pipe never interleave."""
    data = f"{line}\n"
    sys.stderr.flush()
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a captured stream without a file descriptor
        sys.stderr.write(data)
        sys.stderr.flush()
        return
    os.write(fd, data.encode(sys.stderr.encoding or "utf-8", errors="replace"))


def _run(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        return func(args)
    except UserError as exc:
        _say(f"pckd: error: {exc}")
        return exc.exit_code
    except TrainingStopped as exc:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank stops alike: one line says so
            _say(f"pckd: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        _say("pckd: aborted")
        return 130
    except BrokenPipeError:
        raise  # main() handles a reader that left
    except OSError as exc:
        if exc.errno not in _PATH_ERRORS or os.environ.get("PCKD_DEBUG") == "1":
            return _crashed(exc)
        name = exc.filename if isinstance(exc.filename, str) else str(exc.filename or "")
        shown = name if len(name) <= 120 else f"{name[:60]}...{name[-40:]}"
        _say(f"pckd: error: path '{shown}' {_PATH_ERRORS[exc.errno]}; use a shorter or simpler path")
        return 2
    except Exception as exc:
        return _crashed(exc)


# Path errors that only a path the user gave can cause: one line and exit 2, like any bad input.
_PATH_ERRORS = {errno.ENAMETOOLONG: "is longer than the filesystem allows (names up to 255 bytes, paths up to 4096)",
                errno.ELOOP: "runs through a loop of symbolic links"}


def _crashed(exc: BaseException) -> int:
    """An exception pckd did not expect: one line naming it and where its traceback was written, exit 1
    (``PCKD_DEBUG=1`` re-raises it with the full traceback instead)."""
    if os.environ.get("PCKD_DEBUG") == "1":
        raise exc
    from pckd.crash import describe, write_crash_log

    path = write_crash_log(exc)
    where = f"please report it with {path}" if path else "the traceback could not be written anywhere; rerun with " \
                                                         "PCKD_DEBUG=1 to see it"
    _say(f"pckd: error: {describe(exc)} (unexpected; {where})")
    return 1


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """Every warning as one ``pckd: warning: ...`` line: pckd's own as they are, others with their kind and
    origin (no source line echoed)."""
    text = " ".join(str(message).split())
    if not issubclass(category, PckdWarning):
        module = Path(filename).stem if filename else "?"
        text = f"{text} ({category.__name__} from {module})"
    stream = file or sys.stderr
    try:
        stream.write(f"pckd: warning: {text}\n")
        stream.flush()
    except (OSError, ValueError):  # a closed or broken stream must not turn a warning into a crash
        pass


def main(argv: list[str] | None = None) -> int:
    """The ``pckd`` command: parse, run, and turn every outcome into an exit code."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    commands: dict[str, argparse.ArgumentParser] = getattr(parser, "commands", {})
    if len(argv) == 1 and argv[0] in commands and argv[0] not in ("demo", "models", "methods"):
        commands[argv[0]].print_help(sys.stderr)  # a bare command shows its help, not a terse usage error
        return 2
    args, extra = parser.parse_known_args(argv)
    # key=value items after an option (`pckd analyze RUN --figures tsne data.test_limit=100`) belong to the
    # command's trailing list; argparse stops collecting a positional list at the first option.
    trailing = next((name for name in ("items", "overrides") if isinstance(getattr(args, name, None), list)), None)
    if extra and (trailing is None or any(item.startswith("-") for item in extra)):
        parser.parse_args(argv)  # the usual usage error, exit 2
    if extra and trailing is not None:
        getattr(args, trailing).extend(extra)
    if args.command is None:
        parser.print_help()
        return 2
    warnings.filterwarnings("default", category=UserWarning)
    warnings.showwarning = _show_warning
    try:
        return _run(args.func, args)
    except BrokenPipeError:  # `pckd models | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
