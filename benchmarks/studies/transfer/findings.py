"""Where each finding of the what-is-transferred study is decided: one function per claim of protocol.py.

Every function reads the finished runs of the current plan (``results``, the core's PlanResults)
through results.py, reduces them to one number per seed (the unit of replication; measurements
that share a seed, such as block sizes, layers, pairs or sources, are averaged within the seed
first) and decides the claim with benchmarks.core.stats. Runs that have not finished make a
finding ``unmeasured`` (inconclusive, with what is missing), never a guess.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable

import numpy as np

from benchmarks.core import stats
from benchmarks.core.findings import Claim, Finding, decide, unmeasured
from benchmarks.studies.transfer.protocol import (
    ARM_LABEL,
    BARRIER_MARGIN,
    BARRIER_METRIC,
    CHECKPOINT_MARGIN,
    CLAIMS,
    PAIR_UNIT,
    UNIT,
)
from benchmarks.studies.transfer.results import (
    arm_difference,
    block_label,
    checkpoint_accuracy,
    cka_means,
    criticality_table,
    depth_order,
    intact_block,
    pair_values,
    pairs_by_seed,
    train_table,
)

CLAIM = {c.id: c for c in CLAIMS}
SeedValues = list[tuple[Hashable, float]]


def _block_gains(results, key: str = "test_acc") -> dict[tuple[str, int], dict[int, float]]:
    """(source, block) -> seed -> P-T minus R-T of ``key``, for every source of the study."""
    out = {}
    for source in results.cfg["use_sources"]:
        for block, cell in sorted(train_table(results, source).items()):
            diff = arm_difference(cell, key)
            if diff:
                out[(source, block)] = diff
    return out


def _label(results, source: str, block: int) -> str:
    return f"{source} b={block_label(block, intact_block(results.cfg, source))}"


def pt_beats_rt_every_block(results) -> Finding:
    claim = CLAIM["pt_beats_rt_every_block"]
    gains = _block_gains(results)
    if not gains:
        return unmeasured(claim, UNIT, "needs finished train runs of both arms")
    effects = {_label(results, s, b): list(v.values()) for (s, b), v in gains.items()}
    outcome = stats.all_greater(effects)
    detail = "; ".join(f"{label}: {np.mean(v):+.3f}" for label, v in effects.items())
    return decide(claim, outcome, UNIT, f"P-T - R-T test accuracy by block size: {detail}")


def advantage_shrinks(results) -> Finding:
    """Trend of the P-T advantage on log2(block / image side), per seed (centred within each source)."""
    claim = CLAIM["advantage_shrinks"]
    points: dict[Hashable, list[tuple[float, float]]] = {}
    for source in results.cfg["use_sources"]:
        size = intact_block(results.cfg, source)
        by_seed: dict[int, list[tuple[float, float]]] = {}
        for block, cell in train_table(results, source).items():
            for seed, gain in arm_difference(cell, "test_acc").items():
                by_seed.setdefault(seed, []).append((math.log2(block / size), gain))
        for seed, pts in by_seed.items():
            centre = float(np.mean([y for _, y in pts]))  # sources differ in level; the slope is within a source
            points.setdefault(seed, []).extend((x, y - centre) for x, y in pts)
    if not any(len({x for x, _ in pts}) >= 2 for pts in points.values()):
        return unmeasured(claim, UNIT, "needs both arms at two or more block sizes")
    outcome = stats.trend(points, "increasing")
    return decide(claim, outcome, UNIT, "effect = per-seed slope of the P-T - R-T test accuracy on log2(block "
                  "size / image side): positive = the advantage shrinks as blocks get smaller")


def pt_trains_faster(results) -> Finding:
    claim = CLAIM["pt_trains_faster"]
    gains = _block_gains(results)
    if not gains:
        return unmeasured(claim, UNIT, "needs finished train runs of both arms")
    vanished = [sb for sb, v in gains.items() if stats.greater(list(v.values())).verdict != "holds"]
    where = "blocks where P-T's accuracy gain is not significant"
    if not vanished:  # every gain held: the smallest block of each source, where the gain is smallest
        vanished = [min((sb for sb in gains if sb[0] == s), key=lambda sb: sb[1])
                    for s in dict.fromkeys(s for s, _ in gains)]
        where = "the smallest block of each source (every accuracy gain held)"
    speed = _block_gains(results, "speed_train_acc")
    pairs = [(seed, value) for sb in vanished for seed, value in speed.get(sb, {}).items()]
    per_seed = stats.seed_means(pairs)
    outcome = stats.greater(list(per_seed.values()))
    blocks = ", ".join(_label(results, s, b) for s, b in vanished)
    return decide(claim, outcome, UNIT, f"P-T - R-T training speed (mean training accuracy over the first epochs), "
                  f"averaged within each seed over {where}: {blocks}")


def _pair_effect(results, claim: Claim, measure: Callable[[str], dict], test: Callable, what: str) -> Finding:
    """Pair measurements of every analysed source -> per-seed means -> ``test``."""
    pairs: SeedValues = []
    for source in results.cfg["analysis"]["sources"]:
        pairs += pairs_by_seed(measure(source))
    if not pairs:
        return unmeasured(claim, PAIR_UNIT, "needs the pairs stage")
    per_seed = stats.seed_means(pairs)
    return decide(claim, test(list(per_seed.values())), PAIR_UNIT,
                  f"{what}; a seed's value is the mean over the seed pairs it belongs to (pairs share runs)")


def _difference(a: dict, b: dict) -> dict:
    return {k: a[k] - b[k] for k in sorted(set(a) & set(b))}


def cka_pt_above_rt(results) -> Finding:
    return _pair_effect(results, CLAIM["cka_pt_above_rt"],
                        lambda s: _difference(cka_means(results, s, "PT-PT"), cka_means(results, s, "RT-RT")),
                        stats.greater, "effect = mean CKA over layers, P-T/P-T minus R-T/R-T, for the same seed pair")


def l2_pt_below_rt(results) -> Finding:
    def measure(source: str) -> dict:
        return _difference(pair_values(results, source, "l2", "RT-RT", "total"),
                           pair_values(results, source, "l2", "PT-PT", "total"))

    return _pair_effect(results, CLAIM["l2_pt_below_rt"], measure, stats.greater,
                        "effect = l2 distance of all weights, R-T/R-T minus P-T/P-T, for the same seed pair")


def _barrier(results, source: str, kind: str) -> dict:
    return pair_values(results, source, f"{BARRIER_METRIC}_barrier", kind)


def no_barrier_pt(results) -> Finding:
    return _pair_effect(results, CLAIM["no_barrier_pt"], lambda s: _barrier(results, s, "PT-PT"),
                        lambda v: stats.less(v, BARRIER_MARGIN),
                        f"effect = test {BARRIER_METRIC} barrier between two P-T solutions (BN recomputed at each λ)")


def barrier_rt(results) -> Finding:
    return _pair_effect(results, CLAIM["barrier_rt"], lambda s: _barrier(results, s, "RT-RT"),
                        lambda v: stats.greater(v, BARRIER_MARGIN),
                        f"effect = test {BARRIER_METRIC} barrier between two R-T solutions (BN recomputed at each λ)")


def barrier_pt_below_rt(results) -> Finding:
    return _pair_effect(results, CLAIM["barrier_pt_below_rt"],
                        lambda s: _difference(_barrier(results, s, "RT-RT"), _barrier(results, s, "PT-PT")),
                        stats.greater, f"effect = test {BARRIER_METRIC} barrier R-T/R-T minus P-T/P-T, same seed pair")


def criticality_rises_with_depth(results) -> Finding:
    from scipy.stats import spearmanr

    claim = CLAIM["criticality_rises_with_depth"]
    pairs: SeedValues = []
    per_arm: dict[str, list[float]] = {}
    for source in results.cfg["analysis"]["sources"]:
        for arm, seeds in criticality_table(results, source).items():
            for seed, modules in seeds.items():
                order = depth_order(modules)
                values = [modules[m].get("criticality", math.nan) for m in order]
                finite = [v if math.isfinite(v) else 1e300 for v in values]  # inf: never within epsilon
                if len(set(finite)) < 2:
                    continue
                rho = float(spearmanr(range(len(order)), finite).statistic)
                pairs.append((seed, rho))
                per_arm.setdefault(arm, []).append(rho)
    if not pairs:
        return unmeasured(claim, UNIT, "needs criticality runs whose modules differ")
    outcome = stats.greater(list(stats.seed_means(pairs).values()))
    detail = ", ".join(f"{ARM_LABEL.get(a, a)} mean rho {np.mean(v):+.2f} ({len(v)} runs)" for a, v in per_arm.items())
    return decide(claim, outcome, UNIT, f"effect = Spearman rho(depth, criticality), averaged within each seed over "
                  f"arms and sources: {detail}")


def earlier_checkpoint_matches(results) -> Finding:
    from benchmarks.studies.transfer.train import checkpoint_steps

    claim = CLAIM["earlier_checkpoint_matches"]
    pairs: SeedValues = []
    notes = []
    for source in results.cfg["checkpoints"]["sources"]:
        table = checkpoint_accuracy(results, source)
        last = checkpoint_steps(results.cfg["sources"][source]["pretrain"])[-1]
        if last not in table or len(table) < 2:
            continue
        final = {s: m["test_acc"] for s, m in table[last].items()}
        diffs = {step: _difference({s: m["test_acc"] for s, m in seeds.items()}, final)
                 for step, seeds in table.items() if step != last}
        diffs = {step: d for step, d in diffs.items() if d}
        if not diffs:
            continue
        best = max(diffs, key=lambda step: np.mean(list(diffs[step].values())))
        pairs += list(diffs[best].items())
        means = ", ".join(f"step {s}: {np.mean([m['test_acc'] for m in table[s].values()]):.3f}" for s in sorted(table))
        notes.append(f"{source}: best earlier step {best} of {means}")
    if not pairs:
        return unmeasured(claim, UNIT, "needs checkpoint runs and the intact P-T runs of the same seeds")
    outcome = stats.greater(list(stats.seed_means(pairs).values()), -CHECKPOINT_MARGIN)
    return decide(claim, outcome, UNIT, "effect = test accuracy of the best earlier checkpoint minus the last one "
                  f"(non-inferiority at -{CHECKPOINT_MARGIN:g}; the best step is picked on the same runs, which "
                  f"favours the claim); " + "; ".join(notes))


DECIDERS: dict[str, Callable[[object], Finding]] = {
    "pt_beats_rt_every_block": pt_beats_rt_every_block,
    "advantage_shrinks": advantage_shrinks,
    "pt_trains_faster": pt_trains_faster,
    "cka_pt_above_rt": cka_pt_above_rt,
    "l2_pt_below_rt": l2_pt_below_rt,
    "no_barrier_pt": no_barrier_pt,
    "barrier_rt": barrier_rt,
    "barrier_pt_below_rt": barrier_pt_below_rt,
    "criticality_rises_with_depth": criticality_rises_with_depth,
    "earlier_checkpoint_matches": earlier_checkpoint_matches,
}


def decide_all(results) -> list[Finding]:
    """One finding per claim of the protocol, in the protocol's order."""
    return [DECIDERS[claim.id](results) for claim in CLAIMS]
