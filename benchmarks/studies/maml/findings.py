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
    EARLY_SIMILARITY_FROM_TASK,
    FEATURE_REUSE,
    INNER_VS_META_TRAINING,
    LATE_LAYERS,
    LAYERS,
    MEASURE,
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
    return [feature_reuse(data, last), early_similarity_from_task(data, last), inner_vs_meta_training(data, last)]


def _text(values: dict[Hashable, float] | Sequence[float]) -> str:
    values = list(values.values()) if isinstance(values, dict) else list(values)
    return stats.mean_ci(values).interval()


def _missing(claim: Claim, data: dict[str, dict], model: str, minimum: int, kind: str = "within") -> Finding | None:
    if not data:
        return unmeasured(claim, UNIT, "no finished runs of the plan yet")
    short = [e for e, d in data.items() if len(checkpoints(d, model, kind)) < minimum]
    if short:
        return unmeasured(claim, UNIT, f"no {model} run with {minimum} analysed checkpoint(s) in {', '.join(short)}")
    return None


def after_init(d: dict, model: str, kind: str) -> list[int]:
    """The analysed checkpoints of ``model`` after the first one (the initialisation)."""
    return checkpoints(d, model, kind)[1:]


# ============================================================================================ the claims
def feature_reuse(data: dict[str, dict], last: int) -> Finding:
    """Per experiment and seed, at MAML's final checkpoint, step 0 vs the last inner step: the head's dissimilarity
    minus the most-changed body layer's (per task, then averaged within the seed) > 0. No absolute threshold: the
    paper says "near-identical except the head" without a number, so the claim is tested as an ordering."""
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
        effects[experiment] = list(gaps.values())
        layer_means = {layer: by_seed_mean(layer_rows[layer]) for layer in LAYERS}
        ratio = {s: layer_means["head"][s] / max(layer_means[layer][s] for layer in BODY)
                 for s in layer_means["head"] if all(s in layer_means[layer] for layer in BODY)
                 and max(layer_means[layer][s] for layer in BODY) > 0}
        details.append(f"{experiment}: MAML {MEASURE} step 0 vs {last} at meta-step {final}, mean over seeds "
                       + ", ".join(f"{layer} {_text(layer_means[layer])}" for layer in LAYERS)
                       + f"; head ÷ most-changed body layer {_text(ratio)}")
    return decide(claim, stats.all_greater(effects), UNIT, "; ".join(details))


def _head_minus_body_max(layer_rows: dict[str, list[dict]]) -> list[dict]:
    """Per (seed, task): the head's dissimilarity minus the largest body layer's."""
    values = {layer: {(r["seed"], r["task"]): r["value"] for r in rows} for layer, rows in layer_rows.items()}
    keys = set(values["head"]).intersection(*(set(values[layer]) for layer in BODY))
    return [{"seed": seed, "value": values["head"][(seed, task)] - max(values[layer][(seed, task)] for layer in BODY)}
            for seed, task in sorted(keys, key=str)]


def depth_gap(rows: Sequence[dict]) -> dict[Hashable, float]:
    """Per seed: mean dissimilarity of the late body layers minus that of the early layers (> 0: the layers closer
    to the input changed less), over the given rows (checkpoints, tasks) of that seed."""
    late = by_seed_mean([r for r in rows if r["layer"] in LATE_LAYERS])
    early = by_seed_mean([r for r in rows if r["layer"] in EARLY_LAYERS])
    return dict(zip(sorted(set(late) & set(early), key=str), stats.paired(late, early)))


def maml_depth_gap(d: dict, last: int) -> dict[Hashable, float]:
    """MAML's depth gap over the inner loop (step 0 vs ``last``), at the checkpoints after the init."""
    cps = after_init(d, "maml", "within")
    return depth_gap([r for r in select(d["within"], model="maml", inner_step=last, measure=MEASURE)
                      if r["checkpoint"] in cps])


def control_depth_gap(d: dict) -> dict[Hashable, float]:
    """The control's depth gap over its training (each checkpoint after the start vs the start, as mnist.py)."""
    cps = after_init(d, "control", "from_init")
    return depth_gap([r for r in select(d["from_init"], model="control", measure=MEASURE) if r["checkpoint"] in cps])


def early_similarity_from_task(data: dict[str, dict], last: int) -> Finding:
    """The control's layers near the input change less over training than its later body layers, in every
    experiment where MAML's do over the inner loop; inconclusive when MAML itself shows no significant gap
    (nothing to explain)."""
    claim = EARLY_SIMILARITY_FROM_TASK
    missing = _missing(claim, data, "maml", 2) or _missing(claim, data, "control", 2, "from_init")
    if missing:
        return missing
    control_effects, details, unexplained = {}, [], []
    for experiment, d in data.items():
        maml, control = maml_depth_gap(d, last), control_depth_gap(d)
        shown = stats.greater(list(maml.values()))
        if shown.verdict != "holds":
            unexplained.append(f"{experiment} ({shown.verdict}{': ' + shown.note if shown.note else ''})")
        control_effects[experiment] = list(control.values())
        extra = ""
        if checkpoints(d, "finetuned_control"):
            finetuned = depth_gap(select(d["within"], model="finetuned_control", inner_step=last, measure=MEASURE))
            extra = f", fine-tuned control over the inner loop {_text(finetuned)}"
        details.append(f"{experiment}: {MEASURE} of {', '.join(LATE_LAYERS)} minus {', '.join(EARLY_LAYERS)}, "
                       f"mean over the checkpoints after the start: MAML over the inner loop (0 vs {last}) "
                       f"{_text(maml)}, control over training (vs its start) {_text(control)}{extra}")
    outcome = stats.all_greater(control_effects)
    if unexplained:
        outcome = stats.Outcome(outcome.test, outcome.estimate, outcome.p, "inconclusive",
                                note="MAML itself shows no significant gap to explain in " + ", ".join(unexplained))
    return decide(claim, outcome, UNIT, "; ".join(details))


def inner_minus_meta(d: dict, last: int) -> tuple[dict[Hashable, float], dict[str, dict[Hashable, float]]]:
    """Per seed: mean over layers of (base analysis: inner-loop change, step 0 vs last, at the checkpoints after
    the init) minus (neighbour analysis: change of the step-0 representation from the checkpoint before)."""
    cps = after_init(d, "maml", "within")
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
