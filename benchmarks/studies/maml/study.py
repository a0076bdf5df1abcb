"""Study 3: MAML's representations before and after adaptation (``make bench-maml``).

After Goerttler & Obermayer, "Exploring the similarity of representations in model-agnostic
meta-learning" (arXiv 2105.05757) and their public code; the protocol is docs/protocols/maml.md. Per
experiment (a dataset with its published meta-settings) and seed, all runs independent: ``meta_train``
(MAML and ANIL, second order, the paper's inner loop) and ``control`` (the same conv4 trained
conventionally, analysed over its training as the paper's control, and fine-tuned from a fresh head as
a second control), each analysed on a fixed probe set at evenly spaced checkpoints.

Where things are: protocol.py (claims, margins, config checks), plan.py (the runs), train.py (what a
run does), analyse.py (the measurements), findings.py (the verdicts), report.py (report.md, figures).
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.core.study import Run, RunContext, Study
from benchmarks.studies.maml import findings as decisions
from benchmarks.studies.maml import plan as planning
from benchmarks.studies.maml import report as reporting
from benchmarks.studies.maml.protocol import CLAIMS, shadows


class MAMLStudy(Study):
    """Meta-train MAML and ANIL, train a conventional control, compare representations across inner steps."""

    name = "maml"
    protocol = "docs/protocols/maml.md"
    claims = CLAIMS

    def dashboard(self, cfg: dict):
        from benchmarks.studies.maml.dashboard import dashboard

        return dashboard(cfg)

    def shadows(self, cfg: dict) -> dict[str, list[str]]:
        return shadows(cfg)

    def plan(self, cfg: dict) -> list[Run]:
        return planning.runs(self.name, cfg)

    def execute(self, run: Run, ctx: RunContext) -> dict[str, float]:
        import lightning as L

        from benchmarks.studies.maml import train

        L.seed_everything(ctx.seed, workers=True, verbose=False)
        if run.stage == "meta_train":
            return train.meta_train(run, ctx)
        return train.control(run, ctx)

    def findings(self, results) -> list:
        return decisions.decide_all(results)

    def write_report(self, results, findings: list) -> Path:
        return reporting.write_report(results, findings, self.protocol)

    def summary_lines(self, results, findings: list) -> list[str]:
        return reporting.summary_lines(results, findings)
