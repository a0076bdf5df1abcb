"""Study 2: head-only vs full fine-tuning, and how representations change (``make bench-finetune``).

After Goerttler & Obermayer, "Similarity of pre-trained and fine-tuned representations" (arXiv
2207.09225). Protocol, claims and margins: docs/protocols/finetune.md. The parts:

- protocol.py: the claims with the paper's numbers, thresholds and margins with reasons, config checks;
- plan.py: one ``pretrain`` run per seed, then target x mode ``finetune`` runs from that seed's network;
- data.py: source and target tasks (disjoint images, relabelled as the target spec says);
- train.py: executing a run (similarity to the start and a random network tracked every epoch);
- analyse.py: measurements from the finished runs, one number per pretraining seed;
- findings.py: where each finding is decided;
- report.py: report.md, summary.csv, figures.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.core.study import Run, RunContext, Study
from benchmarks.studies.finetune.plan import plan_runs
from benchmarks.studies.finetune.protocol import CLAIMS


class FinetuneStudy(Study):
    """Pretrain on a source task, fine-tune on targets in several modes, track per-layer similarity."""

    name = "finetune"
    protocol = "docs/protocols/finetune.md"
    claims = CLAIMS

    def dashboard(self, cfg: dict):
        from benchmarks.studies.finetune.dashboard import dashboard

        return dashboard(cfg)

    def plan(self, cfg: dict) -> list[Run]:
        return plan_runs(self.name, cfg)

    def execute(self, run: Run, ctx: RunContext) -> dict[str, float]:
        from benchmarks.studies.finetune.train import execute

        return execute(run, ctx)

    def findings(self, results) -> list:
        from benchmarks.studies.finetune.findings import findings

        return findings(results)

    def write_report(self, results, findings: list) -> Path:
        from benchmarks.studies.finetune.report import write_report

        return write_report(results, findings, self.protocol)

    def summary_lines(self, results, findings: list) -> list[str]:
        from benchmarks.studies.finetune.report import summary_lines

        return summary_lines(results, findings)
