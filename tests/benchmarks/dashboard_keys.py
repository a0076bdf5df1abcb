"""Check a study's W&B dashboard against the offline runs it logged (read with wandb's own reader).

Every panel must find its keys in the runs: a line plot its x-axis and each y (or a regex match) in one run's
history, with x never decreasing within the run (W&B needs a monotonic custom axis); a scatter or parallel plot
its run params in the config and its metric in the summary; media and tables their key.
"""

from __future__ import annotations

import re

from benchmarks.core.dashboards import Dashboard, Line, Media, Parallel, Scatter, Table
from benchmarks.core.wandb_reader import OfflineRun


def _history(run: OfflineRun) -> set[str]:
    keys = run.keys()
    return keys | {k.removesuffix("._type") for k in keys if k.endswith("._type")}


def _has(run: OfflineRun, key: str) -> bool:
    return key[len("params."):] in {k.removeprefix("params.") for k in run.config} if key.startswith("params.") \
        else key in run.summary or key in _history(run)


def _line_problems(panel: Line, runs: list[OfflineRun]) -> list[str]:
    problems = []
    with_x = [r for r in runs if panel.x in r.keys()]
    if not with_x:
        return [f"{panel.title!r}: no run logs its x-axis {panel.x!r}"]
    for y in panel.y:
        if not any(y in r.keys() for r in with_x):
            problems.append(f"{panel.title!r}: no run logs {y!r} beside {panel.x!r}")
    if panel.y_regex and not any(re.fullmatch(panel.y_regex, k) for r in with_x for k in r.keys()):
        problems.append(f"{panel.title!r}: no key beside {panel.x!r} matches {panel.y_regex!r}")
    for run in with_x:
        xs = run.series(panel.x)
        if any(b < a for a, b in zip(xs, xs[1:])):
            problems.append(f"{panel.title!r}: {panel.x!r} decreases within run {run.name!r}: {xs}")
    return problems


def dashboard_problems(dashboard: Dashboard, runs: list[OfflineRun]) -> list[str]:
    """Every panel that would show nothing (or a scrambled line) for these runs, with the reason."""
    problems = []
    for section in dashboard.all_sections():
        for panel in section.panels:
            if isinstance(panel, Line):
                problems += _line_problems(panel, runs)
                continue
            if isinstance(panel, Scatter):
                needed = [(panel.x, panel.y)]
            elif isinstance(panel, Parallel):
                needed = [(p, panel.outcome) for p in panel.params]
            else:
                assert isinstance(panel, Media | Table)
                needed = [(key,) for key in (panel.keys if isinstance(panel, Media) else (panel.key,))]
            for keys in needed:
                if not any(all(_has(r, k) for k in keys) for r in runs):
                    problems.append(f"{panel.title!r}: no run has {' and '.join(map(repr, keys))}")
    return problems
