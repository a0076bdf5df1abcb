"""The segmentation study's W&B dashboard: Dice and loss curves per variant and labelled fraction with bands
over seeds, test Dice per run, and how much the encoder moved (CKA before vs after, per stage)."""

from __future__ import annotations

from benchmarks.core.dashboards import Dashboard, Line, Scatter, Section


def dashboard(cfg: dict) -> Dashboard:
    learning = Section("Learning", (
        Line("validation Dice", ("val/dice",)),
        Line("validation IoU", ("val/iou",)),
        Line("training loss", ("train/loss",), log_y=True),
        Scatter("test Dice per run against the variant", "params.variant", "test/dice"),
        Scatter("test Dice per run against the labelled fraction", "params.fraction", "test/dice"),
    ))
    encoder = Section("Encoder change", (
        Line("linear CKA of the encoder before vs after, per stage", ("cka/encoder_before_vs_after",),
             x="cka/stage_index"),
    ))
    return Dashboard("segmentation", (learning, encoder), group_by=("variant", "fraction"), outcome="test/dice")
