"""The fine-tuning study's W&B dashboard: learning curves per target and mode with bands over seeds, each
layer's similarity to its start (and to a random network) against the epoch, the layer x epoch heatmaps."""

from __future__ import annotations

from benchmarks.core.dashboards import Dashboard, Line, Media, Scatter, Section


def dashboard(cfg: dict) -> Dashboard:
    measures = list(cfg["similarity"]["measures"])
    learning = Section("Learning", (
        Line("validation accuracy", ("val/acc",)),
        Line("training loss", ("train/loss_epoch",), log_y=True),
        Line("validation loss", ("val/loss",), log_y=True),
        Scatter("test accuracy per run against the mode", "params.mode", "test/acc"),
    ))
    similarity = Section("Per-layer similarity", tuple(
        Line(f"{measure} to {reference}, per layer", y_regex=f"^{measure}/{reference}/net\\..+$")
        for measure in measures for reference in ("start", "random_init", "init")) + (
        Media("layer x epoch heatmaps", tuple(f"{m}/layer_epoch_heatmap" for m in measures)),))
    return Dashboard("finetune", (learning, similarity), group_by=("target", "mode"), outcome="test/acc")
