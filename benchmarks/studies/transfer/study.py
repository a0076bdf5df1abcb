"""Study 4: what is being transferred in transfer learning? (``make bench-transfer``)

After Neyshabur, Sedghi & Zhang, "What is being transferred in transfer learning?" (NeurIPS 2020).
The parts, one file each:

- protocol.py: stages, arms, the claims with the paper's statements, margins and their reasons, and
  the typed config checks (docs/protocols/transfer.md says it in words);
- plan.py: the runs (pretrain -> train -> pairs, criticality, checkpoint);
- train.py: source pretraining and downstream training (P-T / R-T on block-shuffled images);
- analyse.py: the ``pairs`` and ``criticality`` stages on trained weights (no training);
- results.py: the finished runs' measurements as tables (block -> arm -> seed, pairs, criticality);
- findings.py: one function per claim, deciding it through benchmarks.core.stats;
- figures.py, report.py: the figures, report.md and summary.csv.

This file only wires them into the core's ``Study``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks.core.errors import unknown_name
from benchmarks.core.study import Run, RunContext, Study
from benchmarks.studies.transfer.protocol import CLAIMS, PROTOCOL, STAGES, intact


class TransferStudy(Study):
    """Block shuffle, feature similarity, barriers, module criticality and pretraining checkpoints."""

    name = "transfer"
    protocol = PROTOCOL
    claims = CLAIMS

    def plan(self, cfg: dict) -> list[Run]:
        from benchmarks.studies.transfer.plan import make_plan

        return make_plan(self.name, cfg)

    def execute(self, run: Run, ctx: RunContext) -> dict[str, float]:
        import benchmarks.studies.transfer.train as training
        from benchmarks.studies.transfer.analyse import run_criticality, run_pairs

        if run.config.get("threads"):
            # few intra-op threads: on a shared CPU, more threads than free cores mostly spin and wait
            torch.set_num_threads(int(run.config["threads"]))
        src = run.config.get("source")
        if run.stage == "pretrain":
            return training.pretrain_source(run, ctx)
        if run.stage == "train":
            state = None
            if run.params["init"] == "pretrained":
                pre = ctx.output_of(run.needs[0]) if run.needs else None
                state = training.source_weights(src, pre)
            return training.train_downstream(run, ctx, state, run.params["init"], int(run.params["block"]),
                                             float(run.params["lr"]))
        if run.stage == "checkpoint":
            from benchmarks.studies.transfer.analyse import chosen_members

            state = training.source_weights(src, ctx.output_of(run.needs[0]), int(run.params["step"]))
            lr = chosen_members(ctx, run.config["runs"])[1]["pretrained"]  # the P-T arm's intact rate
            return training.train_downstream(run, ctx, state, "pretrained", intact(src), lr)
        if run.stage == "pairs":
            return run_pairs(run, ctx)
        if run.stage == "criticality":
            return run_criticality(run, ctx)
        raise unknown_name("stage", run.stage, STAGES)

    def dashboard(self, cfg: dict):
        from benchmarks.studies.transfer.dashboard import dashboard

        return dashboard(cfg)

    def shadows(self, cfg: dict) -> dict[str, list[str]]:
        """A source with its own seed list (tiny: sources.imagenet.seeds) ignores --set seeds for its runs."""
        own = [f"sources.{name}.seeds" for name, source in (cfg.get("sources") or {}).items()
               if isinstance(source, dict) and source.get("seeds") is not None]
        return {"seeds": own} if own else {}

    def findings(self, results) -> list:
        from benchmarks.studies.transfer.findings import decide_all

        return decide_all(results)

    def write_report(self, results, findings: list) -> Path:
        from benchmarks.studies.transfer.report import write_report

        return write_report(self, results, findings)

    def summary_lines(self, results, findings: list) -> list[str]:
        from benchmarks.studies.transfer.report import summary_lines

        return summary_lines(results, findings)
