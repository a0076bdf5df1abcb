"""The MAML study's measurements: representation change per layer, task and checkpoint, and its data.

In a run (train.py), after the paper's code (Goerttler & Obermayer, github.com/ThomasGoerttler/
similarity-analysis-of-maml, ``main.py analyze`` and ``data_generator.py``): a fixed probe set of images (one
per class of the analysis split, the same for every analysed task and checkpoint, as the paper's code holds
the query images constant) and a fixed list of tasks whose support sets drive the inner loop. Per layer:

- ``within`` (the paper's base analysis): per checkpoint and task, the probe representations at inner step 0
  vs the last recorded step (vs every recorded step at the final checkpoint);
- ``between`` (the paper's neighbour analysis): the probe representations at inner step 0 of a checkpoint vs
  those of the checkpoint before;
- ``from_init``: the probe representations at a checkpoint vs those of the first checkpoint (the paper's
  control, mnist.py: each layer at training step t vs step 0).

Dissimilarities: RSA (1 - Spearman of the 1 - Pearson RDMs, the paper's choice) and 1 - linear CKA.

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

import numpy as np
import torch

from benchmarks.core.stats import Estimate, mean_ci, seed_means
from benchmarks.studies.maml.protocol import LAYERS, MODELS

KINDS = ("within", "between", "from_init")


# ============================================================================================ in a run
def dissimilarity(measure: str, x: torch.Tensor, y: torch.Tensor) -> float:
    """0 = same geometry: ``measure`` is a similarity registry name (rsa_dissimilarity: 1 - Spearman of
    correlation-distance RDMs; linear_cka_dissimilarity: 1 - linear CKA), through the one route of every
    study (similarity.compare_representations). Degenerate inputs (a constant representation has no RDM)
    give NaN, which the statistics skip."""
    from similarity import compare_representations

    return compare_representations({"layer": x}, {"layer": y}, measure, on_error="nan")["layer"][measure]


def probe_set(dataset, count: int, seed: int) -> torch.Tensor:
    """``count`` images, one from each of ``count`` classes of ``dataset`` drawn with ``seed``: the fixed probe
    set every analysed task and checkpoint is read on (the paper's code holds its query images constant)."""
    from datamodules.tasks import dataset_labels

    labels = dataset_labels(dataset)
    classes = np.unique(labels)
    if count > len(classes):
        raise ValueError(f"needs {count} classes but the split has {len(classes)}")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(classes, size=count, replace=False)
    indices = [int(rng.choice(np.flatnonzero(labels == c))) for c in chosen]
    return torch.stack([torch.as_tensor(dataset[i][0]) for i in indices])


def probe_activations(module, probes: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every layer's output on the probe set with the module's own weights (transductive batch norm), on CPU."""
    from modules.nets.conv4 import CONV4_LAYERS

    _, inner = module.runtime()
    with torch.no_grad():
        acts = inner.model.activations(module.params(), probes.to(module.device), CONV4_LAYERS)
    return {layer: a.detach().cpu() for layer, a in acts.items()}


def inner_loop_rows(load: Callable[[Path], Any], files: dict[int, Path], tasks: Sequence, probes: torch.Tensor,
                    record: Sequence[int], measures: Sequence[str]) -> list[dict]:
    """Base analysis: per checkpoint and task, probe representations at inner step 0 vs the recorded steps: every
    recorded step at the final checkpoint, the last one at the others (what the findings and figures read)."""
    rows = []
    final, last = max(files), max(record)
    for step in sorted(files):
        module = load(files[step])
        device = module.device
        steps = sorted(set(record)) if step == final else [0, last]
        for index, task in enumerate(tasks):
            acts = module.adaptation_activations(task.support_x.to(device), task.support_y.to(device),
                                                 probes.to(device), steps)
            reps = {k: {layer: a.cpu() for layer, a in layers.items()} for k, layers in acts.items()}
            for layer in LAYERS:
                for k in steps[1:]:
                    for measure in measures:
                        rows.append({"checkpoint": step, "task": index, "layer": layer, "inner_step": k,
                                     "measure": measure,
                                     "value": dissimilarity(measure, reps[0][layer], reps[k][layer])})
    return rows


def training_rows(load: Callable[[Path], Any], files: dict[int, Path], probes: torch.Tensor,
                  measures: Sequence[str]) -> dict[str, list[dict]]:
    """Neighbour analysis (each checkpoint vs the one before) and change from the first checkpoint, on the probe
    set at inner step 0 (no adaptation): how (meta-)training itself moves the representations."""
    between, from_init = [], []
    first: dict[str, torch.Tensor] | None = None
    previous: tuple[int, dict[str, torch.Tensor]] | None = None
    for step in sorted(files):
        reps = probe_activations(load(files[step]), probes)
        if first is None:
            first = reps
        for layer in LAYERS:
            for measure in measures:
                from_init.append({"checkpoint": step, "layer": layer, "measure": measure,
                                  "value": dissimilarity(measure, first[layer], reps[layer])})
                if previous is not None:
                    between.append({"from": previous[0], "to": step, "layer": layer, "measure": measure,
                                    "value": dissimilarity(measure, previous[1][layer], reps[layer])})
        previous = (step, reps)
    return {"between": between, "from_init": from_init}


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


def final_summary(within: list[dict], last: int) -> dict[str, float]:
    """A run's metrics: mean dissimilarity per layer between step 0 and the last recorded step, final checkpoint."""
    if not within:
        return {}
    final = max(r["checkpoint"] for r in within)
    rows = aggregate_tasks([r for r in within if r["checkpoint"] == final and r["inner_step"] == last],
                           ("measure", "layer"))
    return {f"{r['measure']}.inner{last}.{r['layer']}": r["mean"] for r in rows}


# ============================================================================================ after the runs
def model_of(run: dict) -> str:
    """The run's network: its algorithm (maml, anil), or control for the conventionally trained CNN."""
    return run["params"].get("algorithm", "control")


def collect(runs: Sequence[dict]) -> dict[str, Any]:
    """Per-task accuracies and analysis rows of finished runs (of one experiment), tagged with model and seed.

    A row that names its own model keeps it: a control run's inner-loop rows and few-shot accuracies belong to
    the fine-tuned control (``finetuned_control``), its training rows to the control itself."""
    data: dict[str, Any] = {"accuracy": [], **{kind: [] for kind in KINDS}}
    for run in runs:
        model, seed = model_of(run), run["params"]["seed"]
        acc_path = Path(run["dir"]) / "test_accuracies.json"
        if acc_path.exists():
            accuracies = json.loads(acc_path.read_text())
            data["accuracy"] += [{"model": accuracies.get("model", model), "seed": seed, "task": task, "value": value}
                                 for task, value in enumerate(accuracies["accuracies"])]
        analysis_path = Path(run["dir"]) / "analysis.json"
        if analysis_path.exists():
            analysis = json.loads(analysis_path.read_text())
            for kind in KINDS:
                data[kind] += [{**r, "model": r.get("model", model), "seed": seed,
                                "value": math.nan if r["value"] is None else r["value"]}
                               for r in analysis.get(kind, [])]
    return data


def select(rows: Sequence[dict], **where: Any) -> list[dict]:
    return [r for r in rows if all(r[k] == v for k, v in where.items())]


def by_seed_mean(rows: Sequence[dict]) -> dict[Hashable, float]:
    """{seed: mean ``value`` of its rows}: tasks, layers and checkpoints of one seed become one number."""
    return seed_means((r["seed"], r["value"]) for r in rows)


def checkpoints(data: dict, model: str, kind: str = "within") -> list[int]:
    """The analysed checkpoints of ``model`` in its ``kind`` rows (within or from_init)."""
    return sorted({r["checkpoint"] for r in data[kind] if r["model"] == model})


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


def task_ci(data: dict, model: str) -> float:
    """The mean over seeds of each seed's 95% CI half-width over its held-out tasks (NaN without two tasks)."""
    per_seed: dict[Hashable, list[float]] = defaultdict(list)
    for row in select(data["accuracy"], model=model):
        per_seed[row["seed"]].append(row["value"])
    widths = [(est.high - est.low) / 2 for est in map(mean_ci, per_seed.values()) if est.n >= 2]
    return float(np.mean(widths)) if widths else math.nan


def models_with_accuracy(data: dict) -> list[str]:
    return [m for m in MODELS if select(data["accuracy"], model=m)]

