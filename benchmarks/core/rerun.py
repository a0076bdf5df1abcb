"""Re-run one run alone from its saved ``run.yaml`` (reproducibility of a single run)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml

from benchmarks.core.devices import resolve_accelerator
from benchmarks.core.errors import UserError
from benchmarks.core.registry import get_study
from benchmarks.core.runner import Launch, execute_run
from benchmarks.core.runstore import RunStore
from benchmarks.core.study import Run


def load_run(run_dir: Path) -> Run:
    path = Path(run_dir) / "run.yaml"
    if not path.exists():
        raise UserError(f"no run.yaml in {run_dir}", "pass a run directory, results/<study>/<run-key>/")
    try:
        record = yaml.safe_load(path.read_text())
        return Run(study=record["study"], stage=record["stage"], params=record["params"],
                   config=record["config"], needs=tuple(record.get("needs", ())))
    except (yaml.YAMLError, TypeError, KeyError) as err:
        raise UserError(f"{path} is unreadable or incomplete ({type(err).__name__}: {err})",
                        "run the study command that planned this run (make bench-<study> with the same PROFILE and "
                        "--set values): it rewrites run.yaml and resumes or keeps the run") from None


def rerun(run_dir: Path, results: str | None = None, force: bool = False) -> int:
    """Execute the run again. In place it resumes an unfinished run, and retrains a finished one only with
    ``force`` (its metrics.json and checkpoints are kept as metrics.previous.json and checkpoints.previous/);
    with ``results`` it starts fresh elsewhere."""
    run = load_run(run_dir)
    root = results if results else Path(run_dir).resolve().parent.parent
    store = RunStore(run.study, root)
    if results:
        for key in run.needs:  # dependencies are read from the original results dir
            source = Path(run_dir).resolve().parent / key
            target = store.run_dir(key)
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(source, target_is_directory=True)
    elif store.is_finished(run.key):
        if not force:
            print(f"{run.key} is finished (metrics.json exists): nothing to do.\n"
                  f"  retrain it here from scratch: python -m benchmarks rerun {run_dir} --force "
                  "(keeps the old metrics.json and checkpoints as *.previous)\n"
                  f"  or redo it elsewhere:         python -m benchmarks rerun {run_dir} --results <dir>")
            return 0
        set_aside_for_retraining(store, run.key)
    accelerator = resolve_accelerator(os.environ.get("TSUITE_ACCELERATOR", "auto"))
    metrics = execute_run(get_study(run.study), run, store, Launch(results=str(root), accelerator=accelerator))
    print({k: v for k, v in metrics.items() if isinstance(v, int | float)})
    return 0


def set_aside_for_retraining(store: RunStore, key: str) -> None:
    """Keep a finished run's metrics.json and checkpoints as ``*.previous`` so that it trains again from scratch."""
    run_dir = store.run_dir(key)
    (run_dir / "metrics.json").replace(run_dir / "metrics.previous.json")
    checkpoints, previous = store.checkpoint_dir(key), run_dir / "checkpoints.previous"
    if checkpoints.exists():
        shutil.rmtree(previous, ignore_errors=True)
        checkpoints.rename(previous)
    for requeue in run_dir.glob("hpc_ckpt_*.ckpt"):
        requeue.replace(previous.parent / f"{requeue.name}.previous")
    store.set_status(key, "pending")
