"""Study 1's measurements from finished runs: per-seed values for the findings, per-variant tables.

Every function here reads run-store rows (``{'params', 'metrics', 'dir', ...}``) of the current plan and
returns numbers keyed by seed, the unit of replication: measurements that share a seed (sources, label
fractions) are averaged within the seed before benchmarks.core.stats sees them.

Converged Dice is the test Dice of the best validation epoch's weights. Convergence speed is the number of
optimiser steps until a run's best-so-far validation Dice first reaches a threshold common to the arms compared
(protocol.THRESHOLD_SHARE); a run that never reaches it counts as its whole step budget.
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
    PLATEAU_TOLERANCE,
    STRONG_SOURCES,
    THRESHOLD_SHARE,
    variant_name,
)

PerSeed = dict[Hashable, float]


def curves(run: dict) -> dict:
    """The run's ``curves.json`` (validation history per epoch with its step, CKA, per-image test Dice)."""
    path = Path(run["dir"]) / "curves.json"
    return json.loads(path.read_text()) if path.exists() else {"history": [], "cka": {}}


def val_curve(run: dict) -> list[tuple[int, float]]:
    """[(optimiser step, validation Dice)] per epoch of one target run."""
    return [(int(r.get("step", 0)), float(r["val/dice"])) for r in curves(run)["history"]
            if r.get("val/dice") is not None]


def steps_to(run: dict, threshold: float) -> float:
    """Optimiser steps until the run's best-so-far validation Dice first reaches ``threshold``; the run's whole
    step budget (``max_steps``) if it never does (censored at the budget)."""
    for step, dice in val_curve(run):
        if dice >= threshold:
            return float(step)
    budget = run["metrics"].get("max_steps")
    if budget is None or math.isnan(budget):
        curve = val_curve(run)
        return float(curve[-1][0]) if curve else math.nan
    return float(budget)


def converged_val(runs: list[dict], variant: str, fraction: float) -> float:
    """Mean over seeds of one arm's converged (best) validation Dice at one label fraction (NaN if none ran)."""
    values = list(per_seed(runs, variant, fraction, "best_val_dice").values())
    return sum(values) / len(values) if values else math.nan


def report_threshold(runs: list[dict], fraction: float) -> float:
    """The report's common threshold at one fraction: THRESHOLD_SHARE x the best arm's converged val Dice."""
    means = [converged_val(runs, v, fraction) for v in present(runs)]
    means = [m for m in means if not math.isnan(m)]
    return THRESHOLD_SHARE * max(means) if means else math.nan


def pair_threshold(runs: list[dict], a: str, b: str, fraction: float) -> float:
    """Finding (a')'s threshold for arms a and b: THRESHOLD_SHARE x the lower of their converged val Dice."""
    return THRESHOLD_SHARE * min(converged_val(runs, a, fraction), converged_val(runs, b, fraction))


def plateau_rows(runs: list[dict]) -> list[dict]:
    """Per (variant, fraction): the last-PLATEAU_EPOCHS improvement of validation Dice (mean and max over runs),
    how many runs stopped early, and whether the arm had plateaued (mean improvement <= PLATEAU_TOLERANCE)."""
    rows = []
    for (variant, fraction), runs_ in sorted(group(runs).items(), key=lambda kv: (kv[0][1],
                                                                                   variant_order(kv[0][0]))):
        changes = [r["metrics"].get("plateau_change", math.nan) for r in runs_]
        known = [c for c in changes if c is not None and not math.isnan(c)]
        stopped = sum(1 for r in runs_ if r["metrics"].get("epochs_run", 0) < r["metrics"].get("max_epochs",
                                                                                            math.inf))
        mean = sum(known) / len(known) if known else math.nan
        rows.append({"variant": variant, "fraction": fraction, "mean": mean, "max": max(known, default=math.nan),
                     "n": len(runs_), "known": len(known), "stopped": stopped,
                     "plateaued": bool(known) and mean <= PLATEAU_TOLERANCE})
    return rows


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
    """One row per (variant, fraction): converged test Dice/IoU, best validation Dice, steps to the report's
    threshold, per-image Dice spread and the run length, as estimates over seeds."""
    rows = []
    thresholds = {f: report_threshold(runs, f) for f in fractions(runs)}
    for (variant, fraction), runs_ in sorted(group(runs).items(), key=lambda kv: (kv[0][1],
                                                                                   variant_order(kv[0][0]))):
        def over(metric: str, runs_: list[dict] = runs_) -> Estimate:
            return mean_ci([r["metrics"].get(metric, math.nan) for r in runs_])

        rows.append({"variant": variant, "fraction": fraction, "dice": over("test_dice"), "iou": over("test_iou"),
                     "best_val": over("best_val_dice"), "threshold": thresholds[fraction],
                     "steps": mean_ci([steps_to(r, thresholds[fraction]) for r in runs_]),
                     "image_sd": over("test_image_dice_sd"), "se": over("test_dice_se"),
                     "epochs": over("epochs_run"), "best_epoch": over("best_epoch")})
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


def steps_difference(runs: list[dict], a: str, b: str, fraction: float) -> PerSeed:
    """{seed: steps(a) − steps(b)} to the pair's threshold (pair_threshold) at one fraction."""
    threshold = pair_threshold(runs, a, b, fraction)
    if math.isnan(threshold):
        return {}
    chosen = [r for r in runs if float(r["params"]["fraction"]) == fraction]
    xa = seed_means(by_seed([r for r in chosen if r["params"]["variant"] == a], lambda r: steps_to(r, threshold)))
    xb = seed_means(by_seed([r for r in chosen if r["params"]["variant"] == b], lambda r: steps_to(r, threshold)))
    return {s: xa[s] - xb[s] for s in sorted(set(xa) & set(xb), key=str)}


def speed_effect(runs: list[dict], source: str | None = None) -> PerSeed:
    """Finding (a'): {seed: steps to threshold, transferred − random decoder}, averaged within the seed over the
    decoder-training sources (or only ``source``) and the label fractions (negative = transferred faster)."""
    sources = [source] if source else decoder_sources(runs)
    return within_seed_mean([steps_difference(runs, variant_name(s, "transferred"), variant_name(s, "random"), f)
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


def pooled_gap(runs: list[dict], fraction: float) -> PerSeed:
    """Finding (b): {seed: mean over the strong sources of (source encoder − classification encoder)}."""
    return within_seed_mean(list(encoder_gaps(runs, fraction).values()))


def pooled_contrastive_margin(runs: list[dict], fraction: float) -> PerSeed:
    """Finding (c): {seed: contrastive encoder − mean of the label-trained sources' encoders}."""
    return within_seed_mean(list(contrastive_margins(runs, fraction).values()))


def contrastive_margins(runs: list[dict], fraction: float) -> dict[str, PerSeed]:
    """Finding (c): {labelled source: {seed: contrastive encoder − that source's encoder}}, random decoders."""
    ssl = variant_name("contrastive", "random")
    names = present(runs)
    return {s: difference(runs, ssl, variant_name(s, "random"), fraction) for s in LABELLED_SOURCES
            if variant_name(s, "random") in names}


def estimate(values: PerSeed) -> Estimate:
    return mean_ci(list(values.values()))


# ============================================================================================ report
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
