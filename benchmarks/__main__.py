"""Command line of the suite.

    python -m benchmarks <study> [--profile tiny] [--set key=value ...] [--print-config]
    python -m benchmarks rerun results/<study>/<run-key>     # one run alone, from its run.yaml
    python -m benchmarks report <study>                      # rebuild the report from finished runs
    python -m benchmarks status <study>                      # pending / running / finished / failed
    python -m benchmarks slurm <study> [--dry-run] ...       # submit the grid to SLURM
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import traceback
from pathlib import Path

from benchmarks.core.errors import CANNOT_WRITE, UserError, cannot_write, unknown_name
from benchmarks.core.quiet import silence_known_noise

USER_ERRORS = (UserError, FileNotFoundError, ValueError, KeyError)
COMMANDS = ("run", "rerun", "report", "status", "slurm", "dashboards")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="tiny", help="config profile: tiny (CPU, minutes), smoke, paper")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config value, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--data-root", default=os.environ.get("DATA_ROOT"), help="root of full-scale datasets")
    p.add_argument("--results", default=None, help="results directory (default ./results or $TSUITE_RESULTS)")
    p.add_argument("--devices", default="1", help="devices per node for Lightning (e.g. 2 for 2-process DDP)")
    p.add_argument("--num-nodes", type=int, default=1)
    p.add_argument("--accelerator", default=os.environ.get("TSUITE_ACCELERATOR", "auto"),
                   help="auto (a GPU when one is visible, else the CPU), cpu or gpu "
                        "(default $TSUITE_ACCELERATOR, else auto)")
    p.add_argument("--jobs", default=os.environ.get("TSUITE_JOBS", "1"),
                   help="runs at once in worker processes: N, or auto (CPU: cores / threads a run uses; GPU: "
                        "--runs-per-gpu per GPU); default $TSUITE_JOBS or 1")
    p.add_argument("--runs-per-gpu", type=int, default=1, help="with --jobs auto on GPUs: concurrent runs per GPU")
    p.add_argument("--strategy", default="auto", help="Lightning strategy, e.g. ddp")
    p.add_argument("--stage", default=None, help="run only this stage")
    p.add_argument("--keys", default="", help="comma-separated run keys to run (SLURM array tasks use this)")
    p.add_argument("--wandb", choices=["offline", "online"], default=None, help="W&B mode (default offline)")
    p.add_argument("--traceback", action="store_true", help="show full tracebacks of input errors")
    p.add_argument("--config", default=None, type=Path,
                   help="a resolved config YAML (e.g. results/<study>/slurm/config.yaml) instead of --profile")


def build_parser() -> argparse.ArgumentParser:
    from benchmarks.core.registry import STUDIES

    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a benchmark (default command)")
    run.add_argument("study", help=f"one of: {', '.join(STUDIES)}")
    _add_run_options(run)
    run.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    rerun = sub.add_parser("rerun", help="re-run one run alone from its saved run.yaml")
    rerun.add_argument("run_dir", type=Path)
    rerun.add_argument("--results", default=None, help="write into this results dir instead (default: in place)")
    rerun.add_argument("--force", action="store_true",
                       help="retrain a finished run in place (old metrics and checkpoints kept as *.previous)")
    rerun.add_argument("--traceback", action="store_true")
    report = sub.add_parser("report", help="rebuild a study's report from its finished runs")
    report.add_argument("study")
    report.add_argument("--stdout", action="store_true", help="print report.md, write nothing (read-only results)")
    _add_run_options(report)
    dashboards = sub.add_parser("dashboards", help="write the study's W&B dashboard (view spec JSON); "
                                                   "--wandb online also saves it to W&B")
    dashboards.add_argument("study")
    dashboards.add_argument("--entity", default=os.environ.get("WANDB_ENTITY", ""),
                            help="W&B user or team to save the dashboard to (default $WANDB_ENTITY, else yours)")
    _add_run_options(dashboards)
    status = sub.add_parser("status", help="count and list runs by status")
    status.add_argument("study")
    _add_run_options(status)
    slurm = sub.add_parser("slurm", help="submit a benchmark to SLURM as job arrays, one per stage")
    slurm.add_argument("study")
    _add_run_options(slurm)
    slurm.add_argument("--partition", default=None)
    slurm.add_argument("--nodes", type=int, default=1)
    slurm.add_argument("--gpus-per-node", type=int, default=0)
    slurm.add_argument("--cpus-per-task", type=int, default=2)
    slurm.add_argument("--time", default="04:00:00",
                       help="time limit of each array task (SLURM duration); it must cover --runs-per-task runs")
    slurm.add_argument("--runs-per-task", type=int, default=1, metavar="N",
                       help="runs of a stage that one array task runs one after another (default 1): packs a grid "
                            "of many small runs into ceil(runs/N) array tasks; a requeued task skips its finished "
                            "runs and resumes the interrupted one")
    slurm.add_argument("--mem", default=None)
    slurm.add_argument("--dry-run", action="store_true", help="print the sbatch scripts, submit nothing")
    return parser


def main(argv: list[str] | None = None) -> int:
    from benchmarks.core.registry import STUDIES, extra_studies

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and (argv[0] in STUDIES or argv[0] in extra_studies()):
        argv.insert(0, "run")
    elif argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:
        err = unknown_name("study or command", argv[0], [*STUDIES, *extra_studies(), *COMMANDS])
        print(f"error: {err}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    silence_known_noise()
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # a job started with `&` from a script inherits SIGINT ignored; `kill -INT` must still interrupt gracefully
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if getattr(args, "wandb", None):
        os.environ["WANDB_MODE"] = args.wandb
    try:
        return dispatch(args)
    except USER_ERRORS as err:
        if getattr(args, "traceback", False):
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"error: {message}", file=sys.stderr)
        print("(add --traceback for the full trace)", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in CANNOT_WRITE or getattr(args, "traceback", False):
            raise
        print(f"error: {cannot_write(err)}", file=sys.stderr)
        return 2


def dispatch(args: argparse.Namespace) -> int:
    from benchmarks.core import runner
    from benchmarks.core.config import apply_overrides, check_not_shadowed, dump, load_yaml
    from benchmarks.core.registry import check_study, get_study

    if args.command == "rerun":
        from benchmarks.core.rerun import rerun

        return rerun(args.run_dir, args.results, force=args.force)
    check_study(args.study)
    if args.config is not None:
        cfg = apply_overrides(load_yaml(args.config), args.overrides)
    else:
        cfg = runner.resolve_config(args.study, args.profile, args.overrides, args.data_root)
    check_not_shadowed(args.overrides, get_study(args.study).shadows(cfg))
    launch = _launch(args)
    if args.command == "run":
        if args.print_config:
            print(dump(cfg), end="")
            return 0
        if os.environ.get("WANDB_MODE") == "online":
            from benchmarks.core.wandb_logger import check_online_logging

            check_online_logging()
        return runner.run_benchmark(args.study, cfg, launch)
    if args.command == "report":
        from benchmarks.core.pipeline import publish
        from benchmarks.core.runstore import RunStore

        if args.stdout:  # nothing written into the store: it may be read-only
            with tempfile.TemporaryDirectory(prefix="report-") as out:
                published = publish(get_study(args.study), cfg, RunStore(args.study, args.results), out=Path(out))
                print(published.report.read_text(), end="")
            return 0
        published = publish(get_study(args.study), cfg, RunStore(args.study, args.results))
        print(f"report: {published.report}\nfindings: {published.findings_json}")
        return 0
    if args.command == "dashboards":
        from benchmarks.core.dashboards import write_dashboard
        from benchmarks.core.runstore import RunStore

        write_dashboard(get_study(args.study), cfg, RunStore(args.study, args.results).root, args.entity,
                        publish=os.environ.get("WANDB_MODE") == "online")
        return 0
    if args.command == "status":
        from benchmarks.core.status import print_status

        return print_status(args.study, cfg, launch)
    if args.command == "slurm":
        from benchmarks.core.slurm import submit_benchmark

        return submit_benchmark(args, cfg, launch)
    raise AssertionError(args.command)


def _launch(args: argparse.Namespace):
    """The checked launch options: accelerator resolved (auto -> gpu or cpu), devices and jobs validated."""
    from benchmarks.core.devices import parse_devices, resolve_accelerator
    from benchmarks.core.grid import parse_jobs
    from benchmarks.core.runner import Launch

    accelerator = resolve_accelerator(args.accelerator) if args.command == "run" else args.accelerator
    if args.runs_per_gpu < 1:
        raise UserError(f"--runs-per-gpu {args.runs_per_gpu} must be at least 1", "use --runs-per-gpu 1 or more")
    return Launch(results=args.results, devices=parse_devices(args.devices, accelerator if args.command == "run"
                                                              else None),
                  num_nodes=args.num_nodes, accelerator=accelerator, strategy=args.strategy, stage=args.stage,
                  keys=tuple(k for k in args.keys.split(",") if k), jobs=parse_jobs(args.jobs),
                  runs_per_gpu=args.runs_per_gpu)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception:  # a bug, not an input error: full trace
        traceback.print_exc()
        sys.exit(1)
