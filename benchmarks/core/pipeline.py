"""After the runs: finished runs of the plan -> the study's findings -> findings.json and report.md.

The one path from runs to verdicts, used at the end of a benchmark and by ``python -m benchmarks
report``: a study never reads the run store itself for a report.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks.core.errors import CANNOT_WRITE, UserError
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
        raise UserError(f"study {study.name}: its findings() returned {ids}, but its claims are {claimed} "
                        "(every claim needs exactly one Finding; the finished runs are kept)",
                        f"fix the study's findings (benchmarks/studies/{study.name}/findings.py), then "
                        f"`python -m benchmarks report {study.name}` rebuilds the report")
    return with_completeness(findings, results.complete, results.completeness)


def publish(study, cfg: dict, store: RunStore, plan: list | None = None, out: Path | None = None) -> Published:
    """Decide the findings from the finished runs of the plan; write findings.json and report.md into the
    store (or into ``out``, e.g. a temporary directory when the store is read-only)."""
    results = plan_results(study, cfg, store, plan)
    if out is not None:
        results = replace(results, root=Path(out))
    findings = decide(study, results)
    try:
        path = write_findings_json(results.root / "findings.json", study.name, results.profile, findings,
                                   results.complete, results.completeness, study.protocol)
        report = study.write_report(results, findings)
        if out is None:
            _log_findings_to_wandb(study.name, results, findings)
    except OSError as err:
        if err.errno not in CANNOT_WRITE:
            raise
        raise UserError(f"cannot write the report into {results.root}: {err.strerror} ({err.filename})",
                        f"the finished runs are intact: `python -m benchmarks status {study.name}` lists them and "
                        f"`python -m benchmarks report {study.name} --stdout` prints the report without writing; "
                        "or free space / make the directory writable and run the same command again") from None
    return Published(report, path, results, findings)


def _log_findings_to_wandb(study: str, results: PlanResults, findings: list[Finding]) -> None:
    """The findings table in the study's W&B runs; a failure there is a warning, never a lost report."""
    from benchmarks.core.wandb_logger import log_findings

    try:
        log_findings(study, results.profile, findings, results.root)
    except Exception as err:  # noqa: BLE001 -- the report and findings.json are written already
        print(f"warning: the findings table could not be logged to W&B ({type(err).__name__}: {err})",
              file=sys.stderr)
