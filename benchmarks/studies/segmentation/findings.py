"""Study 1's findings: each claim of protocol.CLAIMS decided by benchmarks.core.stats, one number per seed.

Every comparison is paired by seed (same labelled subset, same fresh parts) and averaged within the seed over
what shares it (sources, label fractions) before the test; n is the number of seeds. Pooled claims and one
claim per source:
- (a), (a.<source>) "a transferred decoder gives equivalent converged Dice": TOST of transferred − random
  decoder (converged test Dice) within ±DICE_MARGIN;
- (a') "a transferred decoder converges faster": one-sided t-test that steps to the pair's threshold,
  transferred − random, are < 0 (the per-source differences are in the detail);
- (b), (b.<source>) "segmentation / reconstruction encoders beat the classification encoder" at the lowest
  label fraction: one-sided t-test > 0 of the source − classification gap (pooled: mean over both sources);
- (b') "that advantage is larger at the lowest label fraction": one-sided t-test of the per-seed
  (gap at the lowest fraction − gap at the highest);
- (c), (c.<source>) "the contrastive encoder is competitive without labels": non-inferiority at the lowest
  fraction, contrastive − label-trained source > −DICE_MARGIN (pooled: against the mean of those sources).
"""

from __future__ import annotations

from benchmarks.core.findings import Finding, decide, unmeasured
from benchmarks.core.results import PlanResults
from benchmarks.core.stats import equivalent, greater, less
from benchmarks.studies.segmentation import analyse
from benchmarks.studies.segmentation.analyse import PerSeed
from benchmarks.studies.segmentation.protocol import (
    CLAIMS,
    DECODER_SOURCES,
    DICE_MARGIN,
    LABELLED_SOURCES,
    STRONG_SOURCES,
    THRESHOLD_SHARE,
    UNIT,
    claim,
    variant_name,
)


def _values(effect: PerSeed) -> list[float]:
    return list(effect.values())


def decoder_findings(runs: list[dict]) -> list[Finding]:
    """(a) pooled and (a.<source>) per source: transferred − random decoder equivalent to 0 within ±DICE_MARGIN;
    (a') transferred reaches the pair's threshold in fewer steps."""
    sources = analyse.decoder_sources(runs)
    ids = ["a", *(f"a.{s}" for s in DECODER_SOURCES), "a'"]
    if not sources:
        reason = "no finished run with a transferred decoder (grid.transfer_decoder, grid.encoder_sources)"
        return [unmeasured(claim(i), UNIT, reason) for i in ids]
    fractions = ", ".join(f"{f:g}" for f in analyse.fractions(runs))
    per_source = "; ".join(f"{s}: {analyse.estimate(analyse.decoder_effect(runs, s)).interval()}" for s in sources)
    out = [decide(claim("a"), equivalent(_values(analyse.decoder_effect(runs)), DICE_MARGIN), UNIT,
                  f"converged test Dice, transferred − random, per source {per_source}; fractions {fractions}")]
    for source in DECODER_SOURCES:
        c = claim(f"a.{source}")
        if source not in sources:
            out.append(unmeasured(c, UNIT, f"no finished runs of {variant_name(source, 'transferred')}"))
            continue
        out.append(decide(c, equivalent(_values(analyse.decoder_effect(runs, source)), DICE_MARGIN), UNIT,
                          f"converged test Dice, transferred − random; fractions {fractions}"))
    speed = "; ".join(f"{s}: {analyse.estimate(analyse.speed_effect(runs, s)).interval()}" for s in sources)
    out.append(decide(claim("a'"), less(_values(analyse.speed_effect(runs))), UNIT,
                      f"optimiser steps to {THRESHOLD_SHARE:g} x the lower of the two arms' converged validation "
                      f"Dice, transferred − random (negative = transferred faster), per source {speed}"))
    return out


def _missing_encoders(runs: list[dict], sources: tuple[str, ...]) -> list[str]:
    needed = [variant_name(s, "random") for s in sources]
    return sorted(set(needed) - analyse.present(runs))


def encoder_findings(runs: list[dict], low: float, high: float) -> list[Finding]:
    """(b) pooled, (b.<source>) per source at the lowest fraction; (b') the gap shrinks with more labels."""
    ids = ["b", *(f"b.{s}" for s in STRONG_SOURCES), "b'"]
    missing = _missing_encoders(runs, ("classification", *STRONG_SOURCES))
    if missing:
        return [unmeasured(claim(i), UNIT, f"no finished runs of {', '.join(missing)}") for i in ids]
    gaps = analyse.encoder_gaps(runs, low)
    detail = f"label fraction {low:g}; decoders random in every arm"
    if high != low:
        at_high = "; ".join(f"{s} {analyse.estimate(v).interval()}"
                            for s, v in analyse.encoder_gaps(runs, high).items())
        detail += f"; gap at fraction {high:g}: {at_high}"
    out = [decide(claim("b"), greater(_values(analyse.pooled_gap(runs, low))), UNIT,
                  f"mean of {', '.join(STRONG_SOURCES)} − classification; {detail}")]
    out += [decide(claim(f"b.{s}"), greater(_values(gaps[s])), UNIT, detail) for s in STRONG_SOURCES]
    if low == high:
        out.append(unmeasured(claim("b'"), UNIT, f"only one label fraction ({low:g}) finished; the claim needs two"))
    else:
        out.append(decide(claim("b'"), greater(_values(analyse.gap_change(runs, low, high))), UNIT,
                          f"gap = mean({', '.join(STRONG_SOURCES)}) − classification; fraction {low:g} vs {high:g}"))
    return out


def contrastive_findings(runs: list[dict], low: float) -> list[Finding]:
    """(c) pooled and (c.<source>): contrastive − label-trained source > −DICE_MARGIN at the lowest fraction."""
    ids = ["c", *(f"c.{s}" for s in LABELLED_SOURCES)]
    missing = _missing_encoders(runs, ("contrastive", *LABELLED_SOURCES))
    if missing:
        return [unmeasured(claim(i), UNIT, f"no finished runs of {', '.join(missing)}") for i in ids]
    vs_random = analyse.estimate(analyse.difference(runs, variant_name("contrastive", "random"),
                                                    variant_name("random", "random"), low))
    detail = f"label fraction {low:g}; contrastive − random encoder {vs_random.interval()}"
    margins = analyse.contrastive_margins(runs, low)
    out = [decide(claim("c"), greater(_values(analyse.pooled_contrastive_margin(runs, low)), -DICE_MARGIN), UNIT,
                  f"contrastive − mean({', '.join(LABELLED_SOURCES)}); {detail}")]
    out += [decide(claim(f"c.{s}"), greater(_values(margins[s]), -DICE_MARGIN), UNIT, detail)
            for s in LABELLED_SOURCES]
    return out


def findings(results: PlanResults) -> list[Finding]:
    """One finding per claim, in the order of protocol.CLAIMS, from the finished target runs of the plan."""
    runs = results.stage("target")
    fractions = analyse.fractions(runs)
    if not fractions:
        return [unmeasured(c, UNIT, "no finished target run") for c in CLAIMS]
    low, high = fractions[0], fractions[-1]
    decided = {f.id: f for f in (*decoder_findings(runs), *encoder_findings(runs, low, high),
                                 *contrastive_findings(runs, low))}
    return [decided[c.id] for c in CLAIMS]
