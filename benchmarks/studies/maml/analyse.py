"""The MAML study's measurements: representation change per layer, task and checkpoint, and its data.

In a run (train.py): a fixed list of test-class tasks, each with one probe image per class. Each
task's support set drives the inner loop; at inner steps ``record_steps`` the four blocks and the
logits are read on the probe images. Per layer and task, dissimilarities (RSA: 1 - Spearman of the
1 - Pearson RDMs, the paper's choice; CKA: 1 - linear CKA) between inner step 0 and each recorded
step ("within"), and between consecutive checkpoints at step 0 ("between").

After the runs (findings.py, report.py): ``collect`` reads these rows from the finished runs of the
plan, tagged with model and seed; ``by_seed_mean`` averages rows within each seed (the unit of
replication) before anything is compared across seeds.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.core.stats import Estimate, mean_ci, seed_means
from benchmarks.studies.maml.protocol import LAYERS, MODELS

# The study's measure names -> similarity's registry names (cka is reported as 1 - linear CKA).


# ============================================================================================ in a run
def dissimilarity(measure: str, x: torch.Tensor, y: torch.Tensor) -> float:
    """0 = same geometry: ``measure`` is a similarity registry name (rsa_dissimilarity: 1 - Spearman of
    correlation-distance RDMs; linear_cka_dissimilarity: 1 - linear CKA), through the one route of every
    study (similarity.compare_representations). Degenerate inputs (a constant representation has no RDM)
    give NaN, which the statistics skip."""
    from similarity import compare_representations

    return compare_representations({"layer": x}, {"layer": y}, measure, on_error="nan")["layer"][measure]


def task_trajectories(module, tasks: Sequence, record: Sequence[int]) -> list[dict[int, dict[str, torch.Tensor]]]:
    """For each task: layer activations (on CPU) on its probe images at each recorded inner step."""
    device = module.device
    out = []
    for t in tasks:
        acts = module.adaptation_activations(t.support_x.to(device), t.support_y.to(device), t.query_x.to(device),
                                             record)
        out.append({k: {layer: a.cpu() for layer, a in layers.items()} for k, layers in acts.items()})
    return out


def analyse_checkpoints(model: str, load: Callable[[Path], Any], files: dict[int, Path], tasks: Sequence,
                        record: Sequence[int], measures: Sequence[str]) -> dict[str, list[dict]]:
    """Dissimilarity rows of every kept checkpoint: step 0 vs each recorded step, and consecutive checkpoints."""
    within, between = [], []
    previous: tuple[int, list[dict[str, torch.Tensor]]] | None = None
    for step in sorted(files):
        module = load(files[step])
        trajectories = task_trajectories(module, tasks, record)
        for index, reps in enumerate(trajectories):
            for layer in LAYERS:
                for k in record:
                    if k == 0:
                        continue
                    for measure in measures:
                        within.append({"model": model, "checkpoint": step, "task": index, "layer": layer,
                                       "inner_step": k, "measure": measure,
                                       "value": dissimilarity(measure, reps[0][layer], reps[k][layer])})
                if previous is not None:
                    for measure in measures:
                        between.append({"model": model, "from": previous[0], "to": step, "task": index,
                                        "layer": layer, "measure": measure,
                                        "value": dissimilarity(measure, previous[1][index][layer], reps[0][layer])})
        previous = (step, [reps[0] for reps in trajectories])
    return {"within": within, "between": between}


def aggregate_tasks(rows: list[dict], keys: Sequence[str]) -> list[dict]:
    """Within ONE run: mean (and spread) of ``value`` over its analysed tasks for each combination of ``keys``."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for row in rows:
        groups[tuple(row[k] for k in keys)].append(row["value"])
    out = []
    for group, values in sorted(groups.items(), key=lambda kv: tuple(str(v) for v in kv[0])):
        est = mean_ci(values)
        out.append({**dict(zip(keys, group)), "mean": est.mean, "low": est.low, "high": est.high, "n": est.n})
    return out


def final_summary(result: dict, last: int) -> dict[str, float]:
    """A run's metrics: mean dissimilarity per layer between step 0 and the last recorded step, final checkpoint."""
    within = result["within"]
    final = max(r["checkpoint"] for r in within)
    rows = aggregate_tasks([r for r in within if r["checkpoint"] == final and r["inner_step"] == last],
                           ("measure", "layer"))
    return {f"{r['measure']}.inner{last}.{r['layer']}": r["mean"] for r in rows}


# ============================================================================================ after the runs
def model_of(run: dict) -> str:
    return run["params"].get("algorithm", "control")


def collect(runs: Sequence[dict]) -> dict[str, Any]:
    """Per-task accuracies and analysis rows of finished runs (of one experiment), tagged with model and seed."""
    data: dict[str, Any] = {"accuracy": [], "within": [], "between": []}
    for run in runs:
        model, seed = model_of(run), run["params"]["seed"]
        acc_path = Path(run["dir"]) / "test_accuracies.json"
        if acc_path.exists():
            data["accuracy"] += [{"model": model, "seed": seed, "task": task, "value": value}
                                 for task, value in enumerate(json.loads(acc_path.read_text())["accuracies"])]
        analysis_path = Path(run["dir"]) / "analysis.json"
        if analysis_path.exists():
            analysis = json.loads(analysis_path.read_text())
            for kind in ("within", "between"):
                data[kind] += [{**r, "model": model, "seed": seed,
                                "value": math.nan if r["value"] is None else r["value"]} for r in analysis[kind]]
    return data


def select(rows: Sequence[dict], **where: Any) -> list[dict]:
    return [r for r in rows if all(r[k] == v for k, v in where.items())]


def by_seed_mean(rows: Sequence[dict]) -> dict[Hashable, float]:
    """{seed: mean ``value`` of its rows}: tasks, layers and checkpoints of one seed become one number."""
    return seed_means((r["seed"], r["value"]) for r in rows)


def checkpoints(data: dict, model: str) -> list[int]:
    return sorted({r["checkpoint"] for r in data["within"] if r["model"] == model})


def across_seeds(rows: Sequence[dict], keys: Sequence[str]) -> list[dict]:
    """For each combination of ``keys``: the mean over seeds of the per-seed means, with a 95% CI over seeds."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[tuple(row[k] for k in keys)].append(row)
    out = []
    for group, members in sorted(groups.items(), key=lambda kv: tuple(str(v) for v in kv[0])):
        est = mean_ci(list(by_seed_mean(members).values()))
        out.append({**dict(zip(keys, group)), "mean": est.mean, "low": est.low, "high": est.high, "n": est.n})
    return out


def accuracy(data: dict, model: str) -> tuple[Estimate, int]:
    """Meta-test accuracy of ``model``: mean over seeds of each seed's mean over tasks (CI over seeds), and
    the number of tasks per seed."""
    rows = select(data["accuracy"], model=model)
    per_seed = by_seed_mean(rows)
    tasks = round(len(rows) / len(per_seed)) if per_seed else 0
    return mean_ci(list(per_seed.values())), tasks


def models_with_accuracy(data: dict) -> list[str]:
    return [m for m in MODELS if select(data["accuracy"], model=m)]

