"""Where each fine-tuning finding is decided: one function per claim of protocol.CLAIMS.

Every test sees one number per pretraining seed (the unit of replication): a seed's fine-tuning runs
all start from the same pretrained network, so their targets and layers are averaged within the seed
first. Tests come from benchmarks/core/stats.py; thresholds and margins from protocol.py.
"""

from __future__ import annotations

from benchmarks.core import stats
from benchmarks.core.findings import Finding, decide, unmeasured
from benchmarks.studies.finetune import analyse as an
from benchmarks.studies.finetune import protocol as p


def findings(results) -> list[Finding]:
    """One Finding per claim, from the finished runs of the plan (PlanResults)."""
    settings = p.validate(results.cfg)
    runs = results.stage("finetune")
    names = an.layers(runs, settings.measure)
    if not names:
        return [unmeasured(claim, p.UNIT, "no finished fine-tuning runs") for claim in p.CLAIMS]
    context = (runs, settings, names)
    return [depth_trend(*context), early_near_one(*context), top_collapse(*context), unlearned_with_noise(*context),
            permuted_kept(*context), gap_grows_with_shift(*context), lower_beats_head(*context)]


def _top(names: list[str]) -> list[str]:
    return names[-an.TOP_LAYERS:]


def depth_trend(runs, settings, names) -> Finding:
    """Per seed: the slope of similarity to start over layer depth (targets averaged); trend test, decreasing."""
    profile = an.layer_profile(runs, settings.measure, names)
    points = {seed: [(i, by_layer[layer]) for i, layer in enumerate(names) if layer in by_layer]
              for seed, by_layer in profile.items()}
    outcome = stats.trend(points, "decreasing")
    means = {layer: an.mean_of([v[layer] for v in profile.values() if layer in v]) for layer in names}
    detail = (f"effect: slope of {settings.measure} per layer group (depth 0 = {names[0]}); mean per layer: "
              + ", ".join(f"{layer} {value:.3f}" for layer, value in means.items()))
    return decide(p.DEPTH_TREND, outcome, p.UNIT, detail)


def early_near_one(runs, settings, names) -> Finding:
    """Per seed: the first layer's similarity to start (targets averaged); one-sided test > NEAR_ONE."""
    first = names[0]
    profile = an.layer_profile(runs, settings.measure, [first])
    values = [by_layer[first] for by_layer in profile.values()]
    outcome = stats.greater(values, p.NEAR_ONE)
    return decide(p.EARLY_NEAR_ONE, outcome, p.UNIT,
                  f"effect: {first} {settings.measure} to start, tested against {p.NEAR_ONE:g}")


def top_collapse(runs, settings, names) -> Finding:
    """Per seed and collapse target: reference minus target top-layer similarity; Holm over the targets."""
    top, ref = _top(names), settings.reference
    reference = an.top_by_seed(runs, ref, settings.measure, top)
    effects = {}
    for target in settings.collapse_targets:
        other = an.top_by_seed(runs, target, settings.measure, top)
        if reference and other:
            effects[target] = stats.paired(reference, other)
    if not effects:
        return unmeasured(p.TOP_COLLAPSE, p.UNIT, f"no full fine-tuning runs of `{ref}` and of "
                          f"{settings.collapse_targets}")
    outcome = stats.all_greater(effects, p.COLLAPSE_MARGIN)
    after = {t: an.mean_of(an.top_by_seed(runs, t, settings.measure, top)) for t in effects}
    detail = (f"effect: `{ref}` minus target, mean {settings.measure} to start of {', '.join(top)}; per target: "
              + ", ".join(f"{t} {an.mean_of(reference):.2f} -> {value:.2f}" for t, value in after.items())
              + f"; margin {p.COLLAPSE_MARGIN:g}: {p.COLLAPSE_REASON}")
    return decide(p.TOP_COLLAPSE, outcome, p.UNIT, detail)


def unlearned_with_noise(runs, settings, names) -> Finding:
    """Per seed: the slope of top-layer similarity over the label-noise degree; trend test, decreasing."""
    top = _top(names)
    degrees = {t: d for t, d in an.noise_targets(settings.specs, settings.reference).items()
               if t in settings.targets}
    if len(set(degrees.values())) < p.MIN_NOISE_LEVELS:
        return unmeasured(p.UNLEARNED_WITH_NOISE, p.UNIT,
                          f"needs at least {p.MIN_NOISE_LEVELS} label-noise degrees of `{settings.reference}`'s "
                          f"task among the planned targets, has {sorted(set(degrees.values()))}")
    per_target = {t: an.top_by_seed(runs, t, settings.measure, top) for t in degrees}
    points: dict = {}
    for target, by_seed in per_target.items():
        for seed, value in by_seed.items():
            points.setdefault(seed, []).append((degrees[target], value))
    outcome = stats.trend(points, "decreasing")
    detail = ("effect: slope of top-layer similarity per unit of label noise; noise degrees "
              + ", ".join(f"{t}={degrees[t]:g}: {an.mean_of(v):.2f}" for t, v in per_target.items()))
    return decide(p.UNLEARNED_WITH_NOISE, outcome, p.UNIT, detail)


def permuted_kept(runs, settings, names) -> Finding:
    """Per seed: permuted minus reference top-layer similarity (permuted targets averaged); TOST.

    Only with the source head kept (``finetune.head_policy=keep``, as in the paper's code): a kept head
    maps features to the source's classes, so permuted labels must be learned, either by re-mapping the
    head (the usable structure is kept, CKA is blind to a permutation of the head's outputs) or by
    changing the features (it is not). With a fresh head the permutation changes nothing in
    distribution, so that variant is reported unmeasured, with the reason, never as a verdict.
    """
    top, ref = _top(names), settings.reference
    permuted = an.permuted_targets(settings.specs, settings.targets)
    if not permuted:
        return unmeasured(p.PERMUTED_KEPT, p.UNIT, "no permuted-label target among the planned targets")
    if settings.head_policy != p.HEAD_POLICY_FOR_PERMUTED:
        return unmeasured(p.PERMUTED_KEPT, p.UNIT, f"head policy `{settings.head_policy}`: {p.REINIT_PERMUTED_REASON}")
    pairs = [(seed, value) for t in permuted for seed, value in an.top_by_seed(runs, t, settings.measure, top).items()]
    permuted_by_seed, reference = stats.seed_means(pairs), an.top_by_seed(runs, ref, settings.measure, top)
    effects = stats.paired(permuted_by_seed, reference)
    outcome = stats.equivalent(effects, p.EQUIVALENCE_MARGIN)
    detail = (f"effect: {', '.join(permuted)} minus `{ref}`, mean {settings.measure} to start of {', '.join(top)} "
              f"({an.mean_of(permuted_by_seed):.2f} vs {an.mean_of(reference):.2f}); head policy "
              f"`{settings.head_policy}` (the source head is loaded, so the permutation must be learned); "
              f"margin ±{p.EQUIVALENCE_MARGIN:g}")
    return decide(p.PERMUTED_KEPT, outcome, p.UNIT, detail)


def gap_grows_with_shift(runs, settings, names) -> Finding:
    """Per seed: the slope of acc(full) - acc(head) over the position in findings.shift_order; trend test."""
    gaps = {t: an.gap_by_seed(runs, t) for t in settings.shift_order}
    points: dict = {}
    for position, target in enumerate(settings.shift_order):
        for seed, gap in gaps[target].items():
            points.setdefault(seed, []).append((position, gap))
    outcome = stats.trend(points, "increasing")
    detail = ("effect: slope of the full - head test-accuracy gap per step of shift; gaps: "
              + ", ".join(f"{t} {an.mean_of(g):+.3f}" for t, g in gaps.items()))
    return decide(p.GAP_GROWS, outcome, p.UNIT, detail)


def lower_beats_head(runs, settings, names) -> Finding:
    """Per seed: acc(lower) - acc(head) on the most shifted target; one-sided test > 0.

    Like for like: ``lower`` trains the first ``finetune.lower_layers`` body groups and the head
    (modules/classification.py), head-only trains the head; both heads start from the same head policy.
    """
    shifted, first = settings.shift_order[-1], settings.shift_order[0]
    effects = list(an.gap_by_seed(runs, shifted, "lower", "head").values())
    outcome = stats.greater(effects)
    control = stats.mean_ci(list(an.gap_by_seed(runs, first, "lower", "head").values()))
    return decide(p.LOWER_BEATS_HEAD, outcome, p.UNIT,
                  f"effect: acc(lower) - acc(head) on `{shifted}`; same comparison on `{first}`: {control.interval()}; "
                  f"lower trains the first {settings.lower_layers} body groups and the head, both arms with head "
                  f"policy `{settings.head_policy}`")
