"""Finished runs of the what-is-transferred study, arranged for findings, tables and figures.

Only runs of the current plan count (their keys), so results of other profiles or older configs in
the same results directory never mix in. Everything is read from ``metrics.json`` (plus the files a
run wrote beside it, for figures), so reports can be rebuilt at any time.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmarks.report import Finding
from benchmarks.runstore import RunStore
from benchmarks.stats import Estimate

PAIR_KINDS = ("PT-PT", "PT-RT", "RT-RT")
ARM_LABEL = {"pretrained": "P-T", "random": "R-T"}


@dataclass
class Results:
    """Finished runs of the current plan, by stage."""

    cfg: dict
    runs: list[dict]
    planned: int
    by_stage: dict[str, list[dict]] = field(default_factory=dict)

    def stage(self, name: str) -> list[dict]:
        return self.by_stage.get(name, [])

    def train(self, source: str) -> dict[int, dict[str, dict[int, dict]]]:
        """block -> arm -> seed -> metrics of the finished train runs of ``source``."""
        out: dict[int, dict[str, dict[int, dict]]] = defaultdict(lambda: defaultdict(dict))
        for r in self.stage("train"):
            p = r["params"]
            if p["source"] == source:
                out[int(p["block"])][p["init"]][int(p["seed"])] = {**r["metrics"], "_dir": r["dir"]}
        return out


def collect(study, cfg: dict, store: RunStore) -> Results:
    plan = study.plan(cfg)
    keys = {r.key for r in plan}
    runs = [r for r in store.finished_runs() if r["key"] in keys]
    by_stage: dict[str, list[dict]] = defaultdict(list)
    for r in runs:
        by_stage[r["stage"]].append(r)
    return Results(cfg=cfg, runs=runs, planned=len(plan), by_stage=dict(by_stage))


def pair_label(kind: str) -> str:
    """"PT-RT" -> "P-T/R-T"."""
    return "/".join(part.replace("PT", "P-T").replace("RT", "R-T") for part in kind.split("-"))


def intact_block(cfg: Mapping[str, Any], source: str) -> int:
    return int(cfg["sources"][source]["image_size"])


def block_label(block: int, size: int) -> str:
    if block == 1:
        return "1 (pixel shuffle)"
    if block == size:
        return f"{block} (intact)"
    return str(block)


def paired(by_seed_a: Mapping[int, float], by_seed_b: Mapping[int, float]) -> tuple[list[float], list[float]]:
    seeds = sorted(set(by_seed_a) & set(by_seed_b))
    return [by_seed_a[s] for s in seeds], [by_seed_b[s] for s in seeds]


def fmt(e: Estimate, signed: bool = False) -> str:
    if e.n == 0:
        return "no runs"
    sign = "+" if signed else ""
    if e.n < 2:
        return f"{e.mean:{sign}.3f} (n=1)"
    return f"{e.mean:{sign}.3f} [{e.low:{sign}.3f}, {e.high:{sign}.3f}]"


def combine(verdicts: Sequence[str]) -> str:
    """All parts hold -> holds; any part does not hold -> does not hold; otherwise inconclusive."""
    if verdicts and all(v == "holds" for v in verdicts):
        return "holds"
    if any(v == "does not hold" for v in verdicts):
        return "does not hold"
    return "inconclusive"


def no_runs(claim: str, what: str) -> Finding:
    return Finding(claim, "inconclusive", "no finished runs", "0", f"needs {what}")


def advantage_by_seed(table_: Mapping, block: int) -> dict[int, float]:
    pt, rt = table_.get(block, {}).get("pretrained", {}), table_.get(block, {}).get("random", {})
    return {s: pt[s]["test_acc"] - rt[s]["test_acc"] for s in set(pt) & set(rt)}


def pair_values(res: Results, source: str, prefix: str, kind: str, reduce: Callable[[list[float]], float]
                ) -> dict[str, float]:
    """pair "i-j" -> reduce(values of metrics "<prefix>/<kind>/<i-j>/...") from the source's pairs run."""
    out: dict[str, list[float]] = defaultdict(list)
    for r in res.stage("pairs"):
        if r["params"]["source"] != source:
            continue
        for key, value in r["metrics"].items():
            parts = key.split("/")
            if len(parts) >= 3 and parts[0] == prefix and parts[1] == kind:
                out[parts[2]].append(float(value))
    return {pair: reduce(values) for pair, values in out.items()}


def cka_means(res: Results, source: str, kind: str) -> dict[str, float]:
    """Mean CKA over layers per pair (keys cka/<kind>/<pair>/<layer>)."""
    return pair_values(res, source, "cka", kind, lambda v: float(np.mean(v)))


def scalar_pairs(res: Results, source: str, prefix: str, kind: str, suffix: str | None = None) -> dict[str, float]:
    out = {}
    for r in res.stage("pairs"):
        if r["params"]["source"] != source:
            continue
        for key, value in r["metrics"].items():
            parts = key.split("/")
            if parts[0] == prefix and parts[1] == kind and (suffix is None or parts[-1] == suffix):
                out[parts[2]] = float(value)
    return out


def criticality_table(res: Results, source: str) -> dict[str, dict[int, dict[str, dict[str, float]]]]:
    """arm -> seed -> module -> {"criticality", "rewind_error", "depth", "distance"}."""
    out: dict[str, dict[int, dict[str, dict[str, float]]]] = defaultdict(dict)
    for r in res.stage("criticality"):
        p = r["params"]
        if p["source"] != source:
            continue
        modules: dict[str, dict[str, float]] = defaultdict(dict)
        for key, value in r["metrics"].items():
            parts = key.split("/")
            if len(parts) == 2 and parts[0] in ("criticality", "rewind_error", "depth", "distance"):
                modules[parts[1]][parts[0]] = float(value) if value is not None else math.inf
        out[p["init"]][int(p["seed"])] = dict(modules)
    return out


def depth_order(modules: Mapping[str, Mapping[str, float]]) -> list[str]:
    return sorted(modules, key=lambda m: modules[m].get("depth", 0))


def checkpoint_accuracy(res: Results, source: str) -> dict[int, dict[int, dict]]:
    """pretraining step -> seed -> metrics; the last step is the intact P-T train run."""
    from benchmarks.transfer_training import checkpoint_steps

    out: dict[int, dict[int, dict]] = defaultdict(dict)
    for r in res.stage("checkpoint"):
        p = r["params"]
        if p["source"] == source:
            out[int(p["step"])][int(p["seed"])] = r["metrics"]
    last = checkpoint_steps(res.cfg["sources"][source]["pretrain"])[-1]
    seeds = {int(s) for s in res.cfg["checkpoints"]["seeds"]}
    intact = res.train(source).get(intact_block(res.cfg, source), {}).get("pretrained", {})
    for seed, metrics in intact.items():
        if seed in seeds:
            out[last][seed] = metrics
    return dict(out)
