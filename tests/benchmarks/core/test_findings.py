"""Findings carry the claim, the paper, the test, effect with CI, n, unit and verdict into findings.json
and report.md; runs that cannot decide (smoke, missing) are flagged above the verdicts."""

from __future__ import annotations

import json

from benchmarks.core import stats
from benchmarks.core.findings import Claim, decide, unmeasured, with_completeness, write_findings_json
from benchmarks.core.report import findings_section
from benchmarks.core.results import PlanResults

CLAIM = Claim("a_beats_b", "A beats B", "Someone et al. 2020", "0.86 vs 0.59")
SAME = Claim("a_equals_b", "A equals B", "Someone et al. 2020", margin=0.05,
             margin_reason="half the seed-to-seed spread of the paper's Table 2")


def results(profile="tiny", finished=3, planned=3) -> PlanResults:
    runs = [{"key": f"k{i}", "stage": "s", "params": {"seed": i}, "config": {}, "metrics": {}} for i in range(finished)]
    return PlanResults("toy", profile, planned=[None] * planned, runs=runs)


def test_a_finding_records_every_field_of_findings_json(tmp_path):
    finding = decide(CLAIM, stats.greater([0.1, 0.2, 0.15]), unit="seed", detail="paired by seed")
    (finding,) = with_completeness([finding], complete=True, completeness="3 of 3 runs")
    path = write_findings_json(tmp_path / "findings.json", "toy", "tiny", [finding], True, "3 of 3 runs",
                               "docs/protocols/toy.md")
    data = json.loads(path.read_text())
    record = data["findings"][0]
    assert data["complete"] is True and data["protocol"] == "docs/protocols/toy.md"
    assert record["id"] == "a_beats_b" and record["verdict"] == "holds" and record["n"] == 3
    assert record["paper_value"] == "0.86 vs 0.59" and record["unit"] == "seed"
    assert record["ci_low"] < record["effect"] < record["ci_high"] and "t-test" in record["test"]


def test_an_unmeasured_claim_is_inconclusive_with_json_nulls(tmp_path):
    finding = unmeasured(CLAIM, "seed", "no B runs in this plan")
    assert finding.verdict == "inconclusive" and finding.n == 0 and "no B runs" in finding.detail
    record = finding.record()
    assert record["effect"] is None and record["ci_low"] is None


def test_incomplete_runs_are_flagged_above_the_verdicts():
    findings = [decide(CLAIM, stats.greater([0.1, -0.05, 0.12]), unit="seed"),
                decide(SAME, stats.equivalent([0.01, -0.02, 0.0], SAME.margin), unit="seed")]
    partial = findings_section(findings, results(finished=2, planned=3), "docs/protocols/toy.md")
    assert partial.index("Incomplete: 2 of 3 runs") < partial.index("| a_beats_b")
    assert "MDE" in partial and "Someone et al. 2020: 0.86 vs 0.59" in partial
    assert "half the seed-to-seed spread" in partial and "docs/protocols/toy.md" in partial
    smoke = findings_section(findings, results(profile="smoke"), "docs/protocols/toy.md")
    assert "Incomplete" in smoke and "smoke profile" in smoke
    assert "Incomplete" not in findings_section(findings, results(), "docs/protocols/toy.md")
