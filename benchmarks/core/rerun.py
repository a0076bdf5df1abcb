"""Re-run one run alone from its saved ``run.yaml`` (reproducibility of a single run)."""

from __future__ import annotations

from pathlib import Path

import yaml

from benchmarks.core.errors import UserError
from benchmarks.core.registry import get_study
from benchmarks.core.runner import Launch, execute_run
from benchmarks.core.runstore import RunStore
from benchmarks.core.study import Run


def load_run(run_dir: Path) -> Run:
    path = Path(run_dir) / "run.yaml"
    if not path.exists():
        raise UserError(f"no run.yaml in {run_dir}", "pass a run directory, results/<study>/<run-key>/")
    record = yaml.safe_load(path.read_text())
    return Run(study=record["study"], stage=record["stage"], params=record["params"],
               config=record["config"], needs=tuple(record.get("needs", ())))


def rerun(run_dir: Path, results: str | None = None) -> int:
    """Execute the run again. In place it resumes; with ``results`` it starts fresh elsewhere."""
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
        (store.run_dir(run.key) / "metrics.json").rename(store.run_dir(run.key) / "metrics.previous.json")
    metrics = execute_run(get_study(run.study), run, store, Launch(results=str(root)))
    print({k: v for k, v in metrics.items() if isinstance(v, int | float)})
    return 0
