"""After the runs: finished runs of the plan -> the study's findings -> findings.json and report.md.

The one path from runs to verdicts, used at the end of a benchmark and by ``python -m benchmarks
report``: a study never reads the run store itself for a report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from benchmarks.core.findings import Finding, with_completeness, write_findings_json
from benchmarks.core.results import PlanResults, plan_results
from benchmarks.core.runstore import RunStore


@dataclass
class Published:
    report: Path
    findings_json: Path
    results: PlanResults
    findings: list[Finding]


def decide(study, results: PlanResults) -> list[Finding]:
    """The study's findings, each marked with how complete the runs behind it are."""
    findings = study.findings(results)
    ids = [f.id for f in findings]
    claimed = [c.id for c in study.claims]
    if sorted(ids) != sorted(claimed):
        raise AssertionError(f"{study.name}: findings {ids} do not match its claims {claimed}")
    return with_completeness(findings, results.complete, results.completeness)


def publish(study, cfg: dict, store: RunStore, plan: list | None = None) -> Published:
    """Decide the findings from the finished runs of the plan; write findings.json and report.md."""
    results = plan_results(study, cfg, store, plan)
    findings = decide(study, results)
    path = write_findings_json(store.root / "findings.json", study.name, results.profile, findings,
                               results.complete, results.completeness, study.protocol)
    report = study.write_report(results, findings)
    return Published(report, path, results, findings)
