"""The transfer study's measurements, as tables read from the finished runs of the current plan.

``results`` is the core's ``PlanResults`` (benchmarks/core/results.py): only runs of the current plan.
Everything here is read from the runs' ``metrics.json`` (the ``pairs`` and ``criticality`` stages
return their measurements as metrics), so findings and tables never need checkpoints.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np

Pair = tuple[int, int]


def intact_block(cfg: Mapping[str, Any], source: str) -> int:
    return int(cfg["sources"][source]["image_size"])


def block_label(block: int, size: int) -> str:
    if block == 1:
        return "1 (pixel shuffle)"
    if block == size:
        return f"{block} (intact)"
    return str(block)


def pair_label(kind: str) -> str:
    """"PT-RT" -> "P-T/R-T"."""
    return "/".join(part.replace("PT", "P-T").replace("RT", "R-T") for part in kind.split("-"))


def train_runs(results, source: str) -> dict[int, dict[str, dict[float, dict[int, dict]]]]:
    """block -> arm -> learning rate -> seed -> metrics (plus ``_dir``) of the finished ``train`` runs of
    ``source``; its R-T runs are those kept under ``protocol.rt_owner`` (shared by sources of one architecture)."""
    from benchmarks.studies.transfer.protocol import rt_owner

    out: dict[int, dict[str, dict[float, dict[int, dict]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(dict)))
    owner = rt_owner(results.cfg, source)
    blocks = {int(b) for b in results.cfg["sources"][source]["block_sizes"]}
    for name, arm in ((source, "pretrained"), (owner, "random")):
        for r in results.where("train", source=name, init=arm):
            p = r["params"]
            if int(p["block"]) not in blocks:
                continue  # an R-T run the owner has at a block size this source does not use
            out[int(p["block"])][arm][float(p["lr"])][int(p["seed"])] = {**r["metrics"], "_dir": r["dir"]}
    return out


def chosen_lrs(results, source: str) -> dict[int, dict[str, float]]:
    """block -> arm -> the learning rate chosen on mean final validation accuracy (``protocol.choose_lr``)."""
    from benchmarks.studies.transfer.protocol import choose_lr

    out: dict[int, dict[str, float]] = defaultdict(dict)
    for block, arms in train_runs(results, source).items():
        for arm, by_lr in arms.items():
            val = {lr: [float(m["val_acc"]) for m in seeds.values()] for lr, seeds in by_lr.items() if seeds}
            if val:
                out[block][arm] = choose_lr(val)
    return out


def train_table(results, source: str) -> dict[int, dict[str, dict[int, dict]]]:
    """block -> arm -> seed -> metrics of the runs at each (block, arm)'s chosen learning rate."""
    runs, rates = train_runs(results, source), chosen_lrs(results, source)
    out: dict[int, dict[str, dict[int, dict]]] = defaultdict(dict)
    for block, arms in rates.items():
        for arm, lr in arms.items():
            out[block][arm] = dict(runs[block][arm][lr])
    return out


def arm_difference(cell: Mapping[str, Mapping[int, Mapping[str, float]]], key: str) -> dict[int, float]:
    """seed -> P-T minus R-T of metric ``key`` in one block's cell (seeds both arms have)."""
    pt, rt = cell.get("pretrained", {}), cell.get("random", {})
    return {s: float(pt[s][key]) - float(rt[s][key]) for s in sorted(set(pt) & set(rt))}


def _pair(text: str) -> Pair:
    i, j = text.split("-")
    return int(i), int(j)


def pair_values(results, source: str, prefix: str, kind: str, suffix: str | None = None) -> dict[Pair, float]:
    """(seed i, seed j) -> metric ``<prefix>/<kind>/<i-j>[/<suffix>]`` of the source's ``pairs`` run."""
    out = {}
    for r in results.where("pairs", source=source):
        for key, value in r["metrics"].items():
            parts = key.split("/")
            if len(parts) >= 3 and parts[0] == prefix and parts[1] == kind and \
                    (suffix is None and len(parts) == 3 or suffix is not None and parts[-1] == suffix):
                out[_pair(parts[2])] = float(value)
    return out


def cka_means(results, source: str, kind: str) -> dict[Pair, float]:
    """(i, j) -> mean linear CKA over the layers (keys cka/<kind>/<i-j>/<layer>)."""
    values: dict[Pair, list[float]] = defaultdict(list)
    for r in results.where("pairs", source=source):
        for key, value in r["metrics"].items():
            parts = key.split("/")
            if len(parts) == 4 and parts[0] == "cka" and parts[1] == kind:
                values[_pair(parts[2])].append(float(value))
    return {pair: float(np.mean(v)) for pair, v in values.items()}


def pair_layers(results, source: str) -> list[str]:
    """The layers the source's pairs run compared, input side first."""
    layers: list[str] = []
    for r in results.where("pairs", source=source):
        for key in r["metrics"]:
            parts = key.split("/")
            if parts[0] == "cka" and len(parts) == 4 and parts[3] not in layers:
                layers.append(parts[3])
    return layers


def pairs_by_seed(values: Mapping[Pair, float]) -> list[tuple[Hashable, float]]:
    """(seed, value) pairs for ``stats.seed_means``: each pair counts for both of its seeds.

    A seed's number is then the mean over the pairs it belongs to. With a single pair (two seeds)
    both seeds would get the same number, which is one measurement, not two: it is returned once.
    """
    if len(values) == 1:
        ((pair, value),) = values.items()
        return [(pair, value)]
    out: list[tuple[Hashable, float]] = []
    for (i, j), value in values.items():
        out += [(i, value), (j, value)]
    return out


def criticality_table(results, source: str) -> dict[str, dict[int, dict[str, dict[str, float]]]]:
    """arm -> seed -> module -> {"criticality", "depth", "distance"}."""
    out: dict[str, dict[int, dict[str, dict[str, float]]]] = defaultdict(dict)
    for r in results.where("criticality", source=source):
        p = r["params"]
        modules: dict[str, dict[str, float]] = defaultdict(dict)
        for key, value in r["metrics"].items():
            parts = key.split("/")
            if len(parts) == 2 and parts[0] in ("criticality", "depth", "distance"):
                modules[parts[1]][parts[0]] = float(value) if value is not None else math.inf
        out[p["init"]][int(p["seed"])] = dict(modules)
    return out


def depth_order(modules: Mapping[str, Mapping[str, float]]) -> list[str]:
    return sorted(modules, key=lambda m: modules[m].get("depth", 0))


def checkpoint_accuracy(results, source: str) -> dict[int, dict[int, dict]]:
    """pretraining step -> seed -> metrics; the last step is the intact P-T train run."""
    from benchmarks.studies.transfer.train import checkpoint_steps

    cfg = results.cfg
    out: dict[int, dict[int, dict]] = defaultdict(dict)
    for r in results.where("checkpoint", source=source):
        out[int(r["params"]["step"])][int(r["params"]["seed"])] = r["metrics"]
    last = checkpoint_steps(cfg["sources"][source]["pretrain"], intact_block(cfg, source))[-1]
    seeds = {int(s) for s in cfg["checkpoints"]["seeds"]}
    intact = train_table(results, source).get(intact_block(cfg, source), {}).get("pretrained", {})
    for seed, metrics in intact.items():
        if seed in seeds:
            out[last][seed] = metrics
    return dict(out)
