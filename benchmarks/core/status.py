"""Status of a benchmark's runs from the run store: pending / running / interrupted / failed / finished."""

from __future__ import annotations

from collections import Counter

from benchmarks.core.registry import get_study
from benchmarks.core.runstore import RunStore


def run_statuses(study_name: str, cfg: dict, results: str | None) -> list[tuple[str, str, str]]:
    """(stage, key, status) for every planned run."""
    store = RunStore(study_name, results)
    return [(run.stage, run.key, store.status(run.key)) for run in get_study(study_name).plan(cfg)]


def print_status(study_name: str, cfg: dict, launch) -> int:
    rows = run_statuses(study_name, cfg, launch.results)
    counts = Counter(status for _, _, status in rows)
    print(f"{study_name}: " + " · ".join(f"{counts.get(s, 0)} {s}" for s in
                                         ("finished", "running", "interrupted", "failed", "pending")))
    for _stage, key, status in rows:
        if status != "finished":
            print(f"  {status:11s} {key}")
    return 0
