"""Made-up finished MAML runs: analysis.json and test_accuracies.json in run directories, for the findings.

``fabricate_results`` writes, for each seed, a MAML, an ANIL and a control run of one experiment whose
dissimilarities follow simple patterns (with a little seed-, task- and layer-dependent spread), and knobs
(``Pattern``) that reverse one part of the picture at a time.
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
STEPS = (1, 3)  # the smoke profile's record_steps after 0


@dataclass(frozen=True)
class Pattern:
    """Dissimilarities of the fabricated runs (at the last inner step; step 1 gets a third of them)."""

    early: float = 0.05  # MAML's layers near the input over the inner loop
    late: float = 0.15  # MAML's later body layers over the inner loop
    head: float = 0.6  # the head changes most in the inner loop
    control_early: float = 0.1  # the control's layers near the input vs its start (each checkpoint after it)
    control_late: float = 0.3  # ... its later body layers
    between: float = 0.01  # change between consecutive checkpoints at inner step 0 (the neighbour analysis)


def _noise(seed: int, task: int, layer: int, checkpoint: int = 0) -> float:
    return 0.004 * ((seed * 7 + task * 3 + layer + checkpoint * seed) % 5)


def _inner(pattern: Pattern, layer: str) -> float:
    if layer == "head":
        return pattern.head
    return pattern.early if layer in EARLY_LAYERS else pattern.late


def _within(model: str, pattern: Pattern, seed: int, checkpoints: tuple[int, ...]) -> list[dict]:
    return [{"model": model, "checkpoint": checkpoint, "task": task, "layer": layer, "inner_step": step,
             "measure": measure, "value": _inner(pattern, layer) * step / STEPS[-1] + _noise(seed, task, i, index)}
            for index, checkpoint in enumerate(checkpoints) for task in range(TASKS)
            for i, layer in enumerate(LAYERS) for step in STEPS for measure in MEASURES]


def _between(model: str, pattern: Pattern, seed: int) -> list[dict]:
    return [{"model": model, "from": a, "to": b, "layer": layer, "measure": measure,
             "value": pattern.between + 0.003 * seed + _noise(seed, 0, i)}
            for a, b in zip(CHECKPOINTS, CHECKPOINTS[1:]) for i, layer in enumerate(LAYERS) for measure in MEASURES]


def _from_init(model: str, pattern: Pattern, seed: int) -> list[dict]:
    def value(layer: str) -> float:
        if model != "control" or layer == "head":
            return _inner(pattern, layer)
        return pattern.control_early if layer in EARLY_LAYERS else pattern.control_late

    return [{"model": model, "checkpoint": checkpoint, "layer": layer, "measure": measure,
             "value": 0.0 if index == 0 else value(layer) * index / 2 + _noise(seed, 1, i, index)}
            for index, checkpoint in enumerate(CHECKPOINTS) for i, layer in enumerate(LAYERS) for measure in MEASURES]


def write_run(run_dir: Path, model: str, pattern: Pattern, seed: int, accuracy: float) -> None:
    """A finished run's analysis.json and test_accuracies.json, as train.py writes them."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if model == "control":
        analysis = {"within": _within("finetuned_control", pattern, seed, CHECKPOINTS[-1:]),
                    "between": _between("control", pattern, seed), "from_init": _from_init("control", pattern, seed)}
    else:
        analysis = {"within": _within(model, pattern, seed, CHECKPOINTS), "between": _between(model, pattern, seed),
                    "from_init": _from_init(model, pattern, seed)}
    (run_dir / "analysis.json").write_text(json.dumps(analysis))
    accuracies = {"model": "finetuned_control" if model == "control" else model,
                  "accuracies": [accuracy + 0.01 * t for t in range(TASKS)]}
    (run_dir / "test_accuracies.json").write_text(json.dumps(accuracies))


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
