"""Study 1: segmentation transfer, "choose the right encoder, skip the decoder" (``make bench-segmentation``).

After Dippel et al., "Transfer learning for segmentation problems: Choose the right encoder and skip the
decoder" (arXiv 2207.14508); the protocol is docs/protocols/segmentation.md. The parts, one file each:

- protocol.py: names, the claims with their margins and reasons, the typed check of the config;
- plan.py: the runs (stage ``source``: one per source task, cached; stage ``target``: variant x label
  fraction x seed);
- train.py: executing a source or a target run;
- analyse.py: per-seed measurements from the finished runs;
- findings.py: each claim decided by benchmarks.core.stats;
- report.py: report.md, summary.csv, figures and the terminal summary.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.core.findings import Finding
from benchmarks.core.results import PlanResults
from benchmarks.core.study import Run, RunContext, Study
from benchmarks.studies.segmentation import findings as _findings
from benchmarks.studies.segmentation import plan as _plan
from benchmarks.studies.segmentation import report as _report
from benchmarks.studies.segmentation import train as _train
from benchmarks.studies.segmentation.protocol import CLAIMS, PROTOCOL, STUDY


class SegmentationStudy(Study):
    """Stage 1: source tasks (cached); stage 2: fine-tune every variant x label fraction x seed."""

    name = STUDY
    protocol = PROTOCOL
    claims = CLAIMS

    def dashboard(self, cfg: dict):
        from benchmarks.studies.segmentation.dashboard import dashboard

        return dashboard(cfg)

    def plan(self, cfg: dict) -> list[Run]:
        return _plan.plan(cfg)

    def execute(self, run: Run, ctx: RunContext) -> dict[str, float]:
        return _train.execute(run, ctx)

    def findings(self, results: PlanResults) -> list[Finding]:
        return _findings.findings(results)

    def write_report(self, results: PlanResults, findings: list[Finding]) -> Path:
        return _report.write_report(results, findings)

    def summary_lines(self, results: PlanResults, findings: list[Finding]) -> list[str]:
        return _report.summary_lines(results, findings)
