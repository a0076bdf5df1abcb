"""Study 1's findings: each claim of protocol.CLAIMS decided by benchmarks.core.stats, one number per seed.

- (a) "a transferred decoder does not change final Dice": TOST equivalence of the per-seed mean (over the
  decoder-training sources and label fractions) of transferred − random decoder, margin ±DICE_MARGIN.
- (b) "segmentation and reconstruction encoders each beat the classification encoder" at the lowest label
  fraction: one one-sided t-test per source, Holm-corrected (``all_greater``).
- (b') "that advantage is larger at the lowest label fraction": one-sided t-test of the per-seed
  (gap at the lowest fraction − gap at the highest).
- (c) "the contrastive encoder is competitive without labels": non-inferiority against every label-trained
  source at the lowest fraction, effect > −DICE_MARGIN for each, Holm-corrected.
"""

from __future__ import annotations

from benchmarks.core.findings import Finding, decide, unmeasured
from benchmarks.core.results import PlanResults
from benchmarks.core.stats import all_greater, equivalent, greater
from benchmarks.studies.segmentation import analyse
from benchmarks.studies.segmentation.protocol import (
    CLAIMS,
    DICE_MARGIN,
    LABELLED_SOURCES,
    STRONG_SOURCES,
    UNIT,
    claim,
    variant_name,
)


def decoder_finding(runs: list[dict]) -> Finding:
    """(a) transferred − random decoder, averaged within each seed, equivalent to 0 within ±DICE_MARGIN."""
    c = claim("a")
    sources = analyse.decoder_sources(runs)
    if not sources:
        return unmeasured(c, UNIT, "no finished run with a transferred decoder (grid.transfer_decoder, "
                                   "grid.encoder_sources)")
    effect = analyse.decoder_effect(runs)
    per_source = "; ".join(f"{s}: {analyse.estimate(analyse.decoder_effect(runs, s)).interval()}" for s in sources)
    speed = analyse.estimate(analyse.decoder_effect(runs, metric="epochs_to_95"))
    detail = (f"test Dice transferred − random per source {per_source}; epochs to 95% of the final validation "
              f"Dice transferred − random {speed.interval()} (negative = converges faster)")
    return decide(c, equivalent(list(effect.values()), DICE_MARGIN), UNIT, detail)


def encoder_finding(runs: list[dict], low: float, high: float) -> Finding:
    """(b) every strong source's encoder beats the classification encoder at the lowest fraction (Holm)."""
    c = claim("b")
    needed = [variant_name(s, "random") for s in ("classification", *STRONG_SOURCES)]
    missing = sorted(set(needed) - analyse.present(runs))
    if missing:
        return unmeasured(c, UNIT, f"no finished runs of {', '.join(missing)}")
    gaps = analyse.encoder_gaps(runs, low)
    detail = f"label fraction {low:g}; decoders random in every arm"
    if high != low:
        at_high = "; ".join(f"{s} {analyse.estimate(v).interval()}"
                            for s, v in analyse.encoder_gaps(runs, high).items())
        detail += f"; at fraction {high:g}: {at_high}"
    return decide(c, all_greater({s: list(v.values()) for s, v in gaps.items()}), UNIT, detail)


def low_label_finding(runs: list[dict], low: float, high: float) -> Finding:
    """(b') per seed, (gap at the lowest fraction) − (gap at the highest) > 0."""
    c = claim("b'")
    needed = [variant_name(s, "random") for s in ("classification", *STRONG_SOURCES)]
    missing = sorted(set(needed) - analyse.present(runs))
    if missing:
        return unmeasured(c, UNIT, f"no finished runs of {', '.join(missing)}")
    if low == high:
        return unmeasured(c, UNIT, f"only one label fraction ({low:g}) finished; the claim needs two")
    change = analyse.gap_change(runs, low, high)
    return decide(c, greater(list(change.values())), UNIT,
                  f"gap = mean({', '.join(STRONG_SOURCES)}) − classification; fraction {low:g} vs {high:g}")


def contrastive_finding(runs: list[dict], low: float) -> Finding:
    """(c) contrastive − each label-trained source > −DICE_MARGIN at the lowest fraction (Holm)."""
    c = claim("c")
    margins = analyse.contrastive_margins(runs, low)
    if variant_name("contrastive", "random") not in analyse.present(runs) or not margins:
        return unmeasured(c, UNIT, "no finished runs of contrastive/random and a label-trained source "
                                   f"({', '.join(LABELLED_SOURCES)})")
    vs_random = analyse.estimate(analyse.difference(runs, variant_name("contrastive", "random"),
                                                    variant_name("random", "random"), low))
    detail = f"label fraction {low:g}; contrastive − random encoder {vs_random.interval()}"
    return decide(c, all_greater({s: list(v.values()) for s, v in margins.items()}, -DICE_MARGIN), UNIT, detail)


def findings(results: PlanResults) -> list[Finding]:
    """One finding per claim, from the finished target runs of the plan."""
    runs = results.stage("target")
    fractions = analyse.fractions(runs)
    if not fractions:
        return [unmeasured(c, UNIT, "no finished target run") for c in CLAIMS]
    low, high = fractions[0], fractions[-1]
    return [decoder_finding(runs), encoder_finding(runs, low, high), low_label_finding(runs, low, high),
            contrastive_finding(runs, low)]
