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


def near_far(cfg) -> list[str]:
    """The used sources ordered from nearest to farthest from the target (``domain_distance``; else use_sources)."""
    order = [s for s in cfg.get("domain_distance") or [] if s in cfg["use_sources"]]
    return order or list(dict.fromkeys(cfg["use_sources"]))


def _block_gains(results, key: str = "test_acc") -> dict[tuple[str, int], dict[int, float]]:
    """(source, block) -> seed -> P-T minus R-T of ``key`` (each arm at its chosen rate), for every source."""
    out = {}
    for source in dict.fromkeys(results.cfg["use_sources"]):
        for block, cell in sorted(train_table(results, source).items()):
            diff = arm_difference(cell, key)
            if diff:
                out[(source, block)] = diff
    return out


def _label(results, source: str, block: int) -> str:
    return f"{source} b={block_label(block, intact_block(results.cfg, source))}"


def _intact_gain(results, source: str) -> dict[int, float]:
    return _block_gains(results).get((source, intact_block(results.cfg, source)), {})


def pt_beats_rt_near(results) -> Finding:
    claim = CLAIM["pt_beats_rt_near"]
    near = near_far(results.cfg)[0]
    gain = _intact_gain(results, near)
    if not gain:
        return unmeasured(claim, UNIT, f"needs finished intact train runs of both arms for the near source {near}")
    outcome = stats.greater(list(gain.values()))
    return decide(claim, outcome, UNIT, f"effect = P-T - R-T test accuracy on intact images, near source {near}, "
                  "each arm at its learning rate chosen on validation")


def gain_larger_near(results) -> Finding:
    claim = CLAIM["gain_larger_near"]
    order = near_far(results.cfg)
    if len(order) < 2:
        return unmeasured(claim, UNIT, "needs two sources at different distances (domain_distance)")
    near, far = order[0], order[-1]
    gains = {s: _intact_gain(results, s) for s in (near, far)}
    effects = stats.paired(gains[near], gains[far])
    if not effects:
        return unmeasured(claim, UNIT, f"needs intact train runs of both arms for {near} and {far}")
    detail = ", ".join(f"{s}: {np.mean(list(g.values())):+.3f}" for s, g in gains.items() if g)
    return decide(claim, stats.greater(effects), UNIT, f"effect = per seed, P-T gain ({near}) - P-T gain ({far}) on "
                  f"intact images; mean gains {detail}")


def advantage_shrinks(results) -> Finding:
    """Trend of the P-T advantage on log2(block / image side), per seed (centred within each source)."""
    claim = CLAIM["advantage_shrinks"]
    points: dict[Hashable, list[tuple[float, float]]] = {}
    per_block = []
    for source in dict.fromkeys(results.cfg["use_sources"]):
        size = intact_block(results.cfg, source)
        by_seed: dict[int, list[tuple[float, float]]] = {}
        for block, cell in sorted(train_table(results, source).items()):
            gain = arm_difference(cell, "test_acc")
            if gain:
                per_block.append(f"{_label(results, source, block)}: {np.mean(list(gain.values())):+.3f}")
            for seed, value in gain.items():
                by_seed.setdefault(seed, []).append((math.log2(block / size), value))
        for seed, pts in by_seed.items():
            if len({x for x, _ in pts}) < 2:
                continue  # a source at one block size says nothing about the trend
            centre = float(np.mean([y for _, y in pts]))  # sources differ in level; the slope is within a source
            points.setdefault(seed, []).extend((x, y - centre) for x, y in pts)
    if not points:
        return unmeasured(claim, UNIT, "needs both arms at two or more block sizes")
    outcome = stats.trend(points, "increasing")
    return decide(claim, outcome, UNIT, "effect = per-seed slope of the P-T - R-T test accuracy on log2(block "
                  "size / image side): positive = the gain shrinks as blocks get smaller. Mean gain per block: "
                  + "; ".join(per_block))


def pt_trains_faster(results) -> Finding:
    claim = CLAIM["pt_trains_faster"]
    speed = _block_gains(results, "speed_train_acc")
    smallest = {}
    for (source, block) in speed:
        if len([b for s, b in speed if s == source]) >= 2:
            smallest[source] = min(block, smallest.get(source, block))
    if not smallest:
        return unmeasured(claim, UNIT, "needs both arms at two or more block sizes of a source")
    pairs = [(seed, value) for source, block in smallest.items() for seed, value in speed[(source, block)].items()]
    per_seed = stats.seed_means(pairs)
    outcome = stats.greater(list(per_seed.values()))
    blocks = ", ".join(_label(results, s, b) for s, b in smallest.items())
    return decide(claim, outcome, UNIT, "effect = P-T - R-T training speed (mean training accuracy over the first "
                  f"epochs), averaged within each seed over the smallest block of each source: {blocks}")


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
                        lambda v: stats.equivalent(v, BARRIER_MARGIN),
                        f"effect = test {BARRIER_METRIC} barrier between two P-T solutions (BN recomputed at each λ); "
                        f"equivalence to 0 within ±{BARRIER_MARGIN:g}")


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
    """The earlier checkpoint best on validation (the random init, step 0, excluded and reported apart) vs the last."""
    from benchmarks.studies.transfer.train import checkpoint_steps

    claim = CLAIM["earlier_checkpoint_matches"]
    pairs: SeedValues = []
    notes = []
    for source in results.cfg["checkpoints"]["sources"]:
        table = checkpoint_accuracy(results, source)
        last = checkpoint_steps(results.cfg["sources"][source]["pretrain"], intact_block(results.cfg, source))[-1]
        if last not in table:
            continue

        def mean_of(step: int, key: str, table: dict = table) -> float:
            return float(np.mean([m[key] for m in table[step].values()]))

        earlier = [step for step in table if step not in (0, last) and table[step]]
        if 0 in table and table[0]:
            notes.append(f"{source}: random init (step 0, excluded) test {mean_of(0, 'test_acc'):.3f} vs last "
                         f"{mean_of(last, 'test_acc'):.3f}")
        if not earlier:
            continue
        best = max(sorted(earlier), key=lambda step: mean_of(step, "val_acc"))  # chosen on validation
        final = {s: m["test_acc"] for s, m in table[last].items()}
        diff = _difference({s: m["test_acc"] for s, m in table[best].items()}, final)
        pairs += list(diff.items())
        means = ", ".join(f"step {s}: val {mean_of(s, 'val_acc'):.3f} test {mean_of(s, 'test_acc'):.3f}"
                          for s in sorted(table) if s != 0)
        notes.append(f"{source}: earlier step best on validation {best} ({means})")
    if not pairs:
        return unmeasured(claim, UNIT, "needs checkpoint runs after step 0 and the intact P-T runs of the same seeds")
    outcome = stats.greater(list(stats.seed_means(pairs).values()), -CHECKPOINT_MARGIN)
    return decide(claim, outcome, UNIT, "effect = test accuracy of the earlier checkpoint best on validation minus "
                  f"the last one (non-inferiority at -{CHECKPOINT_MARGIN:g}); " + "; ".join(notes))


DECIDERS: dict[str, Callable[[object], Finding]] = {
    "pt_beats_rt_near": pt_beats_rt_near,
    "gain_larger_near": gain_larger_near,
    "advantage_shrinks": advantage_shrinks,
    "pt_trains_faster": pt_trains_faster,
    "cka_pt_above_rt": cka_pt_above_rt,
    "l2_pt_below_rt": l2_pt_below_rt,
    "barrier_pt_below_rt": barrier_pt_below_rt,
    "no_barrier_pt": no_barrier_pt,
    "criticality_rises_with_depth": criticality_rises_with_depth,
    "earlier_checkpoint_matches": earlier_checkpoint_matches,
}


def decide_all(results) -> list[Finding]:
    """One finding per claim of the protocol, in the protocol's order."""
    return [DECIDERS[claim.id](results) for claim in CLAIMS]
