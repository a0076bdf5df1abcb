"""Measurements from the finished runs of the plan: per-layer similarities, accuracies, one number per seed.

Pure functions over run-store rows (``{'key', 'stage', 'params', 'config', 'metrics', 'dir'}``); no
Lightning. A fine-tuning run's seed is also its pretraining seed (it starts from ``pretrain`` of that
seed), so "per seed" means "per pretrained network": everything that shares a seed (targets, layers)
is averaged within the seed before the findings test it (benchmarks/core/stats.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.core.stats import seed_means

TOP_LAYERS = 2  # "the last block and head": the last body group and the head
REFERENCES = ("start", "random_init")  # fine-tuning runs compare with the start network and a fresh random one


def epoch_rows(rows: list[dict]) -> list[dict]:
    """Tracker rows with an epoch index ``x``: 0 = start (the first fit-start snapshot), e = after epoch e.

    A resumed fit takes another fit-start snapshot (of the restored weights, before Lightning restores
    the epoch counter, so it is labelled epoch 0 step 0): only the first start counts. An epoch redone
    after a resume replaces the earlier row of that epoch.
    """
    out: dict[tuple, dict] = {}
    for row in rows:
        if row["moment"] == "fit_start":
            key = (row["reference"], row["layer"], 0)
            if key not in out:
                out[key] = {**row, "x": 0}
        elif row["moment"] == "epoch":
            index = int(row["epoch"]) + 1
            out[(row["reference"], row["layer"], index)] = {**row, "x": index}
    return sorted(out.values(), key=lambda r: (r["reference"], r["x"]))


def select(runs: list[dict], **params: Any) -> list[dict]:
    """Runs whose params include every key=value, in seed order."""
    return sorted([r for r in runs if all(r["params"].get(k) == v for k, v in params.items())],
                  key=lambda r: r["params"]["seed"])


def present(order: Sequence[str], runs: list[dict], key: str) -> list[str]:
    """The values of params[key] among the runs: in ``order`` first, then any others sorted."""
    seen = {r["params"][key] for r in runs}
    return [x for x in order if x in seen] + sorted(seen - set(order))


def metric(runs: list[dict], key: str) -> list[float]:
    return [float(r["metrics"][key]) for r in runs if r["metrics"].get(key) is not None]


def sim_key(measure: str, layer: str, reference: str = "start") -> str:
    """The metrics.json name of a final similarity: ``<measure>.<reference>.<layer>``."""
    return f"{measure}.{reference}.{layer}"


def layers(runs: list[dict], measure: str | None = None, reference: str = "start") -> list[str]:
    """Layer groups in network order: from the metric names (``<measure>.<ref>.<layer>``), ordered by the
    ``depth.<layer>`` metrics (metrics.json is stored with sorted keys, which would put ``fc`` first)."""
    for r in runs:
        prefix = f"{measure or r['config']['similarity']['measures'][0]}.{reference}."
        found = [k[len(prefix):] for k in r["metrics"] if k.startswith(prefix)]
        if found:
            return sorted(found, key=lambda layer: r["metrics"].get(f"depth.{layer}", found.index(layer)))
    return []


def label_degree(spec: dict) -> float | None:
    """Label-noise degree of a target (0 clean, p for noise-p, 1 random), None for permuted labels."""
    from datamodules.label_transforms import parse_label_spec

    kind, noise = parse_label_spec(spec.get("labels", "clean"))
    return None if kind == "permuted" else noise


def noise_targets(specs: dict[str, dict], reference: str) -> dict[str, float]:
    """Targets on the reference's dataset and classes with a label-noise degree, by degree."""
    ref = specs[reference]
    degrees = {t: label_degree(s) for t, s in specs.items()
               if s["dataset"] == ref["dataset"] and list(s["classes"]) == list(ref["classes"])}
    return dict(sorted(((t, d) for t, d in degrees.items() if d is not None), key=lambda kv: kv[1]))


def permuted_targets(specs: dict[str, dict], planned: Sequence[str]) -> list[str]:
    return [t for t in planned if label_degree(specs[t]) is None]


def layer_profile(runs: list[dict], measure: str, names: Sequence[str], mode: str = "full") -> dict[Hashable, dict]:
    """{seed: {layer: final similarity to start, averaged over the seed's targets}} for one mode."""
    out: dict[Hashable, dict] = {}
    for layer in names:
        pairs = [(r["params"]["seed"], r["metrics"].get(sim_key(measure, layer)))
                 for r in runs if r["params"].get("mode") == mode]
        for seed, value in seed_means(pairs).items():
            out.setdefault(seed, {})[layer] = value
    return out


def top_similarity(run: dict, measure: str, top: Sequence[str]) -> float | None:
    """Mean final similarity to start of the top layers of one run (None when one is missing)."""
    values = [run["metrics"].get(sim_key(measure, layer)) for layer in top]
    if any(v is None for v in values):
        return None
    return float(np.mean(values))


def top_by_seed(runs: list[dict], target: str, measure: str, top: Sequence[str],
                mode: str = "full") -> dict[Hashable, float]:
    """{seed: top-layer similarity to start} on one target and mode."""
    return seed_means((r["params"]["seed"], top_similarity(r, measure, top))
                      for r in select(runs, target=target, mode=mode))


def acc_by_seed(runs: list[dict], target: str, mode: str) -> dict[Hashable, float]:
    return seed_means((r["params"]["seed"], r["metrics"].get("test_acc")) for r in select(runs, target=target,
                                                                                            mode=mode))


def gap_by_seed(runs: list[dict], target: str, mode_a: str = "full", mode_b: str = "head") -> dict[Hashable, float]:
    """{seed: acc(mode_a) - acc(mode_b)} on one target (seeds with both modes)."""
    a, b = acc_by_seed(runs, target, mode_a), acc_by_seed(runs, target, mode_b)
    return {s: a[s] - b[s] for s in sorted(set(a) & set(b), key=str)}


def mean_of(values: dict[Hashable, float] | list[float]) -> float:
    data = list(values.values()) if isinstance(values, dict) else list(values)
    return float(np.mean(data)) if data else math.nan


def similarity_curves(runs: list[dict], measure: str, reference: str) -> dict[str, dict[int, list[float]]]:
    """{layer: {epoch index: [value per run]}} from the runs' similarity.json (missing files skipped)."""
    curves: dict[str, dict[int, list[float]]] = {}
    for run in runs:
        file = Path(run["dir"]) / f"similarity_{measure}" / "similarity.json"
        if not file.exists():
            continue
        for row in epoch_rows(json.loads(file.read_text())["rows"]):
            if row["reference"] == reference:
                layer = row["layer"].removeprefix("net.")
                curves.setdefault(layer, {}).setdefault(row["x"], []).append(row["value"])
    return curves
