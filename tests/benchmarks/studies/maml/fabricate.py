"""Made-up finished MAML runs: analysis.json and test_accuracies.json in run directories, for the findings.

``fabricate_results`` writes, for each seed, a MAML, an ANIL and a control run of one experiment whose
dissimilarities follow simple patterns (with a little seed- and task-dependent spread), and knobs that
reverse one part of the picture at a time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from benchmarks.core.runner import resolve_config
from benchmarks.studies.maml.protocol import EARLY_LAYERS, LAYERS, MEASURES
from tests.benchmarks.study_tester import fabricated, row

CHECKPOINTS = (0, 2, 4)
TASKS = 3


@dataclass(frozen=True)
class Pattern:
    """Dissimilarities (step 0 vs a later inner step) of the fabricated runs."""

    body_final: float = 0.06  # MAML/ANIL body layers at the final checkpoint (near-identical: < 0.1)
    body_first: float = 0.09  # ... at the first checkpoint (the early layers' similarity rises through training)
    head: float = 0.6  # the head changes a lot in the inner loop
    control_early_first: float = 0.09  # the control's early layers at its first checkpoint
    control_early_final: float = 0.05  # ... and at its last (a rise of similarity, like MAML's)
    between: float = 0.01  # change between consecutive checkpoints (meta-training) at inner step 0


def _noise(seed: int, task: int, layer: int, checkpoint: int = 0) -> float:
    return 0.004 * ((seed * 7 + task * 3 + layer + checkpoint * seed) % 5)


def _within(model: str, pattern: Pattern, seed: int) -> list[dict]:
    rows = []
    for index, checkpoint in enumerate(CHECKPOINTS):
        frac = index / (len(CHECKPOINTS) - 1)
        for task in range(TASKS):
            for i, layer in enumerate(LAYERS):
                if layer == "head":
                    base = pattern.head
                elif model == "control" and layer in EARLY_LAYERS:
                    base = pattern.control_early_first + frac * (pattern.control_early_final
                                                                 - pattern.control_early_first)
                else:
                    base = pattern.body_first + frac * (pattern.body_final - pattern.body_first)
                for step in (1, 2):
                    for measure in MEASURES:
                        rows.append({"model": model, "checkpoint": checkpoint, "task": task, "layer": layer,
                                     "inner_step": step, "measure": measure,
                                     "value": base * step / 2 + _noise(seed, task, i, index)})
    return rows


def _between(model: str, pattern: Pattern, seed: int) -> list[dict]:
    return [{"model": model, "from": a, "to": b, "task": task, "layer": layer, "measure": measure,
             "value": pattern.between + 0.003 * seed + _noise(seed, task, i)}
            for a, b in zip(CHECKPOINTS, CHECKPOINTS[1:]) for task in range(TASKS)
            for i, layer in enumerate(LAYERS) for measure in MEASURES]


def write_run(run_dir: Path, model: str, pattern: Pattern, seed: int, accuracy: float) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "analysis.json").write_text(json.dumps({"within": _within(model, pattern, seed),
                                                       "between": _between(model, pattern, seed)}))
    (run_dir / "test_accuracies.json").write_text(json.dumps({"accuracies": [accuracy + 0.01 * t
                                                                             for t in range(TASKS)]}))


def fabricate_results(tmp_path: Path, pattern: Pattern = Pattern(), seeds: tuple[int, ...] = (0, 1, 2, 3)):
    """PlanResults of MAML, ANIL and control runs of the smoke profile's one experiment, for ``seeds``."""
    cfg = resolve_config("maml", "smoke", [])
    (experiment,) = cfg["experiments"]
    runs = []
    for seed in seeds:
        for model in ("maml", "anil", "control"):
            params = ({"experiment": experiment, "seed": seed} if model == "control"
                      else {"experiment": experiment, "algorithm": model, "seed": seed})
            stage = "control" if model == "control" else "meta_train"
            run_dir = tmp_path / f"{model}-{seed}"
            write_run(run_dir, model, pattern, seed, accuracy=0.5 + 0.02 * seed)
            runs.append(row(stage, params, {}, run_dir=run_dir))
    return fabricated("maml", cfg, runs, root=tmp_path)
