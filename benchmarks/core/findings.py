"""Findings: a study's claims, decided by benchmarks.core.stats, written to report.md and findings.json.

A ``Claim`` is fixed by the study's protocol before any run: its id, the claim in words, the paper
and its published number where there is one, and (for equivalence claims) the margin with its
reason. A ``Finding`` is a claim plus the ``Outcome`` of its test on the finished runs of the current
plan, the unit of replication, and whether the runs behind it are complete.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.core.runstore import atomic_write_json
from benchmarks.core.stats import Outcome, mean_ci, power_text


@dataclass(frozen=True)
class Claim:
    """What a study checks, as its protocol states it (never derived from the results)."""

    id: str
    text: str
    paper: str
    paper_value: str = ""  # the published number, or "" where the paper gives none
    margin: float | None = None
    margin_reason: str = ""


@dataclass(frozen=True)
class Finding:
    """One decided claim: every field of a findings.json entry."""

    id: str
    claim: str
    paper: str
    paper_value: str
    test: str
    effect: float
    ci_low: float
    ci_high: float
    n: int
    unit: str
    verdict: str
    p: float
    mde: float | None
    n_needed: int | None
    margin: float | None = None
    margin_reason: str = ""
    detail: str = ""
    complete: bool = True
    completeness: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def effect_text(self) -> str:
        if self.n == 0:
            return "n/a"
        if self.n < 2 or not math.isfinite(self.ci_low):
            return f"{self.effect:+.3f} (no CI)"
        return f"{self.effect:+.3f} [{self.ci_low:+.3f}, {self.ci_high:+.3f}]"

    def power_text(self) -> str:
        return power_text(self.verdict, self.n, self.mde, self.n_needed)

    def record(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("effect", "ci_low", "ci_high", "p", "mde"):
            value = out[key]
            if isinstance(value, float) and not math.isfinite(value):
                out[key] = None
        return out


def decide(claim: Claim, outcome: Outcome, unit: str, detail: str = "", **extra: Any) -> Finding:
    """The finding of ``claim`` from the outcome of its test."""
    e = outcome.estimate
    text = "; ".join(t for t in (detail, outcome.note) if t)
    return Finding(id=claim.id, claim=claim.text, paper=claim.paper, paper_value=claim.paper_value,
                   test=outcome.test, effect=e.mean, ci_low=e.low, ci_high=e.high, n=e.n, unit=unit,
                   verdict=outcome.verdict, p=outcome.p, mde=outcome.mde, n_needed=outcome.n_needed,
                   margin=claim.margin, margin_reason=claim.margin_reason, detail=text, extra=dict(extra))


def unmeasured(claim: Claim, unit: str, reason: str) -> Finding:
    """A claim the finished runs cannot decide at all (e.g. its runs are not in the plan yet)."""
    return decide(claim, Outcome("not tested", mean_ci([]), math.nan, "inconclusive"), unit, reason)


def with_completeness(findings: list[Finding], complete: bool, completeness: str) -> list[Finding]:
    from dataclasses import replace

    return [replace(f, complete=complete, completeness=completeness) for f in findings]


def write_findings_json(path: Path, study: str, profile: str, findings: list[Finding], complete: bool,
                        completeness: str, protocol: str) -> Path:
    """``findings.json``: the machine-readable verdicts of a report."""
    atomic_write_json(path, {"study": study, "profile": profile, "complete": complete,
                             "completeness": completeness, "protocol": protocol,
                             "findings": [f.record() for f in findings]})
    return path
