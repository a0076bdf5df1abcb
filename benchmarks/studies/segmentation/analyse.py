"""Study 1's measurements from finished runs: per-seed values for the findings, per-variant tables.

Every function here reads run-store rows (``{'params', 'metrics', 'dir', ...}``) of the current plan and
returns numbers keyed by seed, the unit of replication: measurements that share a seed (sources, label
fractions) are averaged within the seed before benchmarks.core.stats sees them.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Hashable, Sequence
from pathlib import Path

from benchmarks.core.results import by_seed
from benchmarks.core.stats import Estimate, mean_ci, seed_means
from benchmarks.studies.segmentation.protocol import (
    DECODER_SOURCES,
    ENCODER_SOURCES,
    LABELLED_SOURCES,
    STRONG_SOURCES,
    variant_name,
)

PerSeed = dict[Hashable, float]


def epochs_to_fraction(curve: Sequence[float], fraction: float = 0.95) -> int | None:
    """First epoch (1-based) whose value reaches ``fraction`` x the final value (None for an empty curve)."""
    values = [v for v in curve if v is not None and not math.isnan(v)]
    if not values:
        return None
    goal = fraction * values[-1]
    for epoch, value in enumerate(values, 1):
        if value >= goal:
            return epoch
    return len(values)


# ============================================================================================ rows
def fractions(runs: list[dict]) -> list[float]:
    return sorted({float(r["params"]["fraction"]) for r in runs})


def present(runs: list[dict]) -> set[str]:
    return {r["params"]["variant"] for r in runs}


def group(runs: list[dict]) -> dict[tuple[str, float], list[dict]]:
    groups: dict[tuple[str, float], list[dict]] = defaultdict(list)
    for r in runs:
        groups[(r["params"]["variant"], float(r["params"]["fraction"]))].append(r)
    return groups


def variant_order(name: str) -> tuple[int, str]:
    encoder = name.split("/")[0]
    rank = ENCODER_SOURCES.index(encoder) if encoder in ENCODER_SOURCES else len(ENCODER_SOURCES)
    return (rank + (10 if "frozen" in name else 0), name)


def summary_rows(runs: list[dict]) -> list[dict]:
    """One row per (variant, fraction): test Dice/IoU and epochs-to-95% estimates over seeds."""
    rows = []
    for (variant, fraction), runs_ in sorted(group(runs).items(), key=lambda kv: (kv[0][1],
                                                                                   variant_order(kv[0][0]))):
        dice = mean_ci([r["metrics"]["test_dice"] for r in runs_])
        rows.append({"variant": variant, "fraction": fraction, "dice": dice,
                     "iou": mean_ci([r["metrics"]["test_iou"] for r in runs_]),
                     "epochs": mean_ci([r["metrics"].get("epochs_to_95", math.nan) for r in runs_]),
                     "final_val": mean_ci([r["metrics"].get("final_val_dice", math.nan) for r in runs_])})
    return rows


# ============================================================================================ per seed
def per_seed(runs: list[dict], variant: str, fraction: float, metric: str = "test_dice") -> PerSeed:
    """{seed: metric} of one variant at one label fraction."""
    chosen = [r for r in runs if r["params"]["variant"] == variant and float(r["params"]["fraction"]) == fraction]
    return seed_means(by_seed(chosen, lambda r: r["metrics"].get(metric)))


def difference(runs: list[dict], a: str, b: str, fraction: float, metric: str = "test_dice") -> PerSeed:
    """{seed: a − b} over the seeds both variants finished (paired by seed)."""
    xa, xb = per_seed(runs, a, fraction, metric), per_seed(runs, b, fraction, metric)
    return {s: xa[s] - xb[s] for s in sorted(set(xa) & set(xb), key=str)}


def within_seed_mean(parts: Sequence[PerSeed]) -> PerSeed:
    """{seed: mean over ``parts``} over the seeds every part has: one number per independent run."""
    parts = [p for p in parts if p]
    if not parts:
        return {}
    seeds = set.intersection(*(set(p) for p in parts))
    return seed_means((s, p[s]) for p in parts for s in seeds)


def decoder_sources(runs: list[dict]) -> list[str]:
    """The sources whose transferred-decoder variant has finished runs."""
    names = present(runs)
    return [s for s in DECODER_SOURCES if variant_name(s, "transferred") in names]


def decoder_effect(runs: list[dict], source: str | None = None, metric: str = "test_dice") -> PerSeed:
    """Finding (a): {seed: transferred − random decoder}, averaged within the seed over the decoder-training
    sources (or only ``source``) and the label fractions."""
    sources = [source] if source else decoder_sources(runs)
    return within_seed_mean([difference(runs, variant_name(s, "transferred"), variant_name(s, "random"), f, metric)
                             for s in sources for f in fractions(runs)])


def encoder_gaps(runs: list[dict], fraction: float) -> dict[str, PerSeed]:
    """Finding (b): {source: {seed: source encoder − classification encoder}} at one fraction, random decoders."""
    weak = variant_name("classification", "random")
    return {s: difference(runs, variant_name(s, "random"), weak, fraction) for s in STRONG_SOURCES}


def gap_change(runs: list[dict], low: float, high: float) -> PerSeed:
    """Finding (b'): {seed: gap at ``low`` − gap at ``high``}, the gap averaged over the strong sources."""
    gap_low = within_seed_mean(list(encoder_gaps(runs, low).values()))
    gap_high = within_seed_mean(list(encoder_gaps(runs, high).values()))
    return {s: gap_low[s] - gap_high[s] for s in sorted(set(gap_low) & set(gap_high), key=str)}


def contrastive_margins(runs: list[dict], fraction: float) -> dict[str, PerSeed]:
    """Finding (c): {labelled source: {seed: contrastive encoder − that source's encoder}}, random decoders."""
    ssl = variant_name("contrastive", "random")
    names = present(runs)
    return {s: difference(runs, ssl, variant_name(s, "random"), fraction) for s in LABELLED_SOURCES
            if variant_name(s, "random") in names}


def estimate(values: PerSeed) -> Estimate:
    return mean_ci(list(values.values()))


# ============================================================================================ report
def curves(run: dict) -> dict:
    path = Path(run["dir"]) / "curves.json"
    return json.loads(path.read_text()) if path.exists() else {"history": [], "cka": {}}


def cka_rows(runs: list[dict]) -> tuple[list[str], list[list[object]], dict[str, list[float]]]:
    """Encoder-stage CKA before vs after fine-tuning, mean per variant over its runs."""
    per_variant: dict[str, list[list[float]]] = defaultdict(list)
    for r in runs:
        values = [v for k, v in sorted(r["metrics"].items()) if k.startswith("cka/stage")]
        if values:
            per_variant[r["params"]["variant"]].append(values)
    names = sorted(per_variant, key=variant_order)
    if not names:
        return [], [], {}
    stages = min(len(v) for vs in per_variant.values() for v in vs)
    means = {n: [mean_ci([v[i] for v in per_variant[n]]).mean for i in range(stages)] for n in names}
    headers = ["variant"] + [f"stage {i + 1}" for i in range(stages)]
    return headers, [[n] + [round(x, 3) for x in means[n]] for n in names], means


def comparisons() -> list[tuple[str, str]]:
    """The paired comparisons the report tabulates (a − b, same seed)."""
    out = [(variant_name(s, "transferred"), variant_name(s, "random")) for s in DECODER_SOURCES]
    out += [(variant_name(s, "random"), variant_name("classification", "random"))
            for s in ("segmentation", "reconstruction", "contrastive")]
    out += [(variant_name(s, "random"), variant_name("random", "random"))
            for s in ("imagenet", "classification", "segmentation", "reconstruction", "contrastive")]
    out += [(variant_name("random", "random", "encoder"), variant_name("random", "random"))]
    return out


def paired_rows(runs: list[dict]) -> list[tuple[str, float, Estimate]]:
    """(comparison, fraction, estimate of the per-seed difference) for every comparison both arms ran."""
    names = present(runs)
    rows = []
    for a, b in comparisons():
        if a not in names or b not in names:
            continue
        for f in fractions(runs):
            e = estimate(difference(runs, a, b, f))
            if e.n:
                rows.append((f"{a} − {b}", f, e))
    return rows
