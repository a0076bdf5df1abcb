"""Where the MAML study's findings are decided: one function per claim of protocol.CLAIMS.

The unit of replication is the seed (one meta-training run, or one control run). Every measurement
that shares a seed (analysed tasks, layers, checkpoints) is averaged within that seed first; the tests
of benchmarks.core.stats then see one number per seed. Each claim must hold in every experiment of
the plan: one one-sided test per experiment (and per part of the claim), Holm-corrected
(``stats.all_greater``). With one seed every finding is inconclusive and says that at least 2 seeds
are needed.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from benchmarks.core import stats
from benchmarks.core.findings import Claim, Finding, decide, unmeasured
from benchmarks.core.results import PlanResults
from benchmarks.studies.maml.analyse import by_seed_mean, checkpoints, collect, select
from benchmarks.studies.maml.protocol import (
    BODY,
    EARLY_LAYERS,
    EARLY_RISE_FROM_TASK,
    FEATURE_REUSE,
    INNER_VS_META_TRAINING,
    LAYERS,
    MEASURE,
    NEAR_IDENTICAL,
    UNIT,
)


def last_inner_step(cfg: dict) -> int:
    """The inner step the claims compare with step 0: the last recorded one."""
    return max(cfg["analysis"]["record_steps"])


def experiment_data(results: PlanResults) -> dict[str, dict]:
    """{experiment: collected rows} for the experiments of the plan that have finished runs."""
    out = {}
    for experiment in results.cfg["experiments"]:
        runs = [r for r in results.runs if r["params"].get("experiment") == experiment]
        if runs:
            out[str(experiment)] = collect(runs)
    return out


def decide_all(results: PlanResults) -> list[Finding]:
    data = experiment_data(results)
    last = last_inner_step(results.cfg)
    return [feature_reuse(data, last), early_rise_from_task(data, last), inner_vs_meta_training(data, last)]


def _text(values: dict[Hashable, float] | Sequence[float]) -> str:
    values = list(values.values()) if isinstance(values, dict) else list(values)
    return stats.mean_ci(values).interval()


def _missing(claim: Claim, data: dict[str, dict], model: str, minimum: int) -> Finding | None:
    if not data:
        return unmeasured(claim, UNIT, "no finished runs of the plan yet")
    short = [e for e, d in data.items() if len(checkpoints(d, model)) < minimum]
    if short:
        return unmeasured(claim, UNIT, f"no {model} run with {minimum} analysed checkpoint(s) in {', '.join(short)}")
    return None


# ============================================================================================ the claims
def feature_reuse(data: dict[str, dict], last: int) -> Finding:
    """Per experiment and seed, at MAML's final checkpoint, step 0 vs the last inner step: the head changes
    more than the most-changed body layer, and every body layer stays below NEAR_IDENTICAL."""
    claim = FEATURE_REUSE
    missing = _missing(claim, data, "maml", 1)
    if missing:
        return missing
    effects: dict[str, list[float]] = {}
    details = []
    for experiment, d in data.items():
        final = checkpoints(d, "maml")[-1]
        rows = select(d["within"], model="maml", checkpoint=final, inner_step=last, measure=MEASURE)
        layer_rows = {layer: select(rows, layer=layer) for layer in LAYERS}
        gaps = by_seed_mean(_head_minus_body_max(layer_rows))
        effects[f"{experiment}: head − most-changed body layer"] = list(gaps.values())
        layer_means = {layer: by_seed_mean(layer_rows[layer]) for layer in LAYERS}
        for layer in BODY:
            effects[f"{experiment}: {NEAR_IDENTICAL:g} − {layer}"] = [NEAR_IDENTICAL - v
                                                                     for v in layer_means[layer].values()]
        details.append(f"{experiment}: {MEASURE} step 0 vs {last} at step {final}, mean over seeds "
                       + ", ".join(f"{layer} {_text(layer_means[layer])}" for layer in LAYERS))
    outcome = stats.all_greater(effects)
    return decide(claim, outcome, UNIT, "; ".join(details) + f"; near-identical = below {NEAR_IDENTICAL:g}")


def _head_minus_body_max(layer_rows: dict[str, list[dict]]) -> list[dict]:
    """Per (seed, task): the head's dissimilarity minus the largest body layer's."""
    values = {layer: {(r["seed"], r["task"]): r["value"] for r in rows} for layer, rows in layer_rows.items()}
    keys = set(values["head"]).intersection(*(set(values[layer]) for layer in BODY))
    return [{"seed": seed, "value": values["head"][(seed, task)] - max(values[layer][(seed, task)] for layer in BODY)}
            for seed, task in sorted(keys, key=str)]


def early_fall(d: dict, model: str, last: int) -> dict[Hashable, float]:
    """Per seed: the early layers' inner-loop dissimilarity at the first analysed checkpoint minus at the
    last one (> 0: the representations before and after the inner loop became more similar)."""
    cps = checkpoints(d, model)
    rows = [r for r in select(d["within"], model=model, inner_step=last, measure=MEASURE) if r["layer"] in EARLY_LAYERS]
    first = by_seed_mean(select(rows, checkpoint=cps[0]))
    final = by_seed_mean(select(rows, checkpoint=cps[-1]))
    return dict(zip(sorted(set(first) & set(final), key=str), stats.paired(first, final)))


def early_rise_from_task(data: dict[str, dict], last: int) -> Finding:
    """The control's early-layer rise of similarity through training, in every experiment where MAML shows one;
    inconclusive when MAML itself shows no significant rise (nothing to explain)."""
    claim = EARLY_RISE_FROM_TASK
    missing = _missing(claim, data, "maml", 2) or _missing(claim, data, "control", 2)
    if missing:
        return missing
    control_effects, details, unexplained = {}, [], []
    for experiment, d in data.items():
        maml, control = early_fall(d, "maml", last), early_fall(d, "control", last)
        rise = stats.greater(list(maml.values()))
        if rise.verdict != "holds":
            unexplained.append(f"{experiment} ({rise.verdict}{': ' + rise.note if rise.note else ''})")
        control_effects[experiment] = list(control.values())
        details.append(f"{experiment}: fall of {MEASURE} (step 0 vs {last}) in {', '.join(EARLY_LAYERS)} "
                       f"from the first to the last checkpoint, MAML {_text(maml)}, control {_text(control)}")
    outcome = stats.all_greater(control_effects)
    if unexplained:
        outcome = stats.Outcome(outcome.test, outcome.estimate, outcome.p, "inconclusive",
                                note="MAML itself shows no significant rise to explain in " + ", ".join(unexplained))
    return decide(claim, outcome, UNIT, "; ".join(details))


def inner_minus_meta(d: dict, last: int) -> tuple[dict[Hashable, float], dict[str, dict[Hashable, float]]]:
    """Per seed: mean over layers of (inner-loop change, step 0 vs last, averaged over the checkpoints after the
    first) minus (change between consecutive checkpoints at step 0); and the same per layer."""
    cps = checkpoints(d, "maml")[1:]
    within = [r for r in select(d["within"], model="maml", inner_step=last, measure=MEASURE) if r["checkpoint"] in cps]
    between = [r for r in select(d["between"], model="maml", measure=MEASURE) if r["to"] in cps]
    per_layer = {}
    for layer in LAYERS:
        inner, meta = by_seed_mean(select(within, layer=layer)), by_seed_mean(select(between, layer=layer))
        per_layer[layer] = dict(zip(sorted(set(inner) & set(meta), key=str), stats.paired(inner, meta)))
    seeds = set.intersection(*(set(v) for v in per_layer.values()))
    overall = {s: sum(per_layer[layer][s] for layer in LAYERS) / len(LAYERS) for s in sorted(seeds, key=str)}
    return overall, per_layer


def inner_vs_meta_training(data: dict[str, dict], last: int) -> Finding:
    claim = INNER_VS_META_TRAINING
    missing = _missing(claim, data, "maml", 2)
    if missing:
        return missing
    effects, details = {}, []
    for experiment, d in data.items():
        overall, per_layer = inner_minus_meta(d, last)
        effects[experiment] = list(overall.values())
        details.append(f"{experiment}: inner loop (step 0 vs {last}) minus change between consecutive checkpoints "
                       "(MAML, mean over seeds), per layer: "
                       + ", ".join(f"{layer} {_text(v)}" for layer, v in per_layer.items()))
    return decide(claim, stats.all_greater(effects), UNIT, "; ".join(details))
