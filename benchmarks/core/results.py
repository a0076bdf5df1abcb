"""The finished runs of the current plan: the only runs a report may read.

The run store of a study can hold runs of other profiles or older configs (their keys differ: the key
hashes the resolved config). ``plan_results`` keeps exactly the planned runs that have finished, so a
report never mixes in a run the current command did not plan, and says how complete it is.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.core.runstore import RunStore
from benchmarks.core.study import Run


@dataclass
class PlanResults:
    """Finished runs of one plan, as run-store rows ({'key', 'stage', 'params', 'config', 'metrics', 'dir'})."""

    study: str
    profile: str
    planned: list[Run]
    runs: list[dict]
    cfg: dict = field(default_factory=dict)
    root: Path = Path("results")  # the study's store directory: report.md, summary.csv, figures/ go here

    @property
    def n_planned(self) -> int:
        return len(self.planned)

    @property
    def n_finished(self) -> int:
        return len(self.runs)

    @property
    def complete(self) -> bool:
        """All planned runs finished and the profile is one that can decide findings (not ``smoke``)."""
        return self.n_finished == self.n_planned and self.profile != "smoke"

    @property
    def completeness(self) -> str:
        text = f"{self.n_finished} of {self.n_planned} runs"
        if self.profile == "smoke":
            text += " (smoke profile: a test-sized run, not evidence)"
        return text

    def stage(self, name: str) -> list[dict]:
        return [r for r in self.runs if r["stage"] == name]

    def where(self, stage: str | None = None, **params: Any) -> list[dict]:
        """Finished runs of ``stage`` whose params include every given key=value."""
        return [r for r in self.runs if (stage is None or r["stage"] == stage)
                and all(r["params"].get(k) == v for k, v in params.items())]


def plan_results(study: Any, cfg: dict, store: RunStore, plan: list[Run] | None = None) -> PlanResults:
    """The finished runs of ``study.plan(cfg)`` in ``store`` (a given ``plan`` is used as is)."""
    planned = study.plan(cfg) if plan is None else plan
    runs = []
    for run in planned:  # stage, params and config from the plan: a damaged run.yaml cannot hide a result
        metrics = store.metrics_or_none(run.key)
        if metrics is not None:
            runs.append({"key": run.key, "stage": run.stage, "params": dict(run.params), "config": dict(run.config),
                         "metrics": metrics, "dir": store.run_dir(run.key)})
    return PlanResults(study=store.study, profile=str(cfg.get("profile", "")), planned=planned, runs=runs,
                       cfg=cfg, root=store.root)


def by_seed(runs: Iterable[dict], value: Callable[[dict], float | None],
            seed: Callable[[dict], Hashable] = lambda r: r["params"].get("seed")) -> list[tuple[Hashable, float]]:
    """(seed, value) pairs of runs, for benchmarks.core.stats.seed_means (None values dropped)."""
    pairs = []
    for run in runs:
        v = value(run)
        if v is not None:
            pairs.append((seed(run), float(v)))
    return pairs
