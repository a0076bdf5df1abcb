"""The MAML study's W&B dashboard: meta-training curves with bands over seeds, representation change over the
inner loop (against the inner step) and over meta-training (against the meta-training step), meta-test accuracy."""

from __future__ import annotations

from benchmarks.core.dashboards import Dashboard, Line, Media, Scatter, Section
from benchmarks.studies.maml.protocol import LAYERS


def dashboard(cfg: dict) -> Dashboard:
    measures = list(cfg["analysis"]["measures"])
    inner = max(cfg["analysis"]["record_steps"])
    learning = Section("Meta-training", (
        Line("meta-train query accuracy", ("train/acc",)),
        Line("meta-validation accuracy", ("val/acc",)),
        Line("meta-train query loss", ("train/loss",)),
        Scatter("meta-test accuracy per run (95% CI over tasks in test/acc_ci95)", "params.algorithm", "test/acc"),
    ))
    within = Section("Change in the inner loop", tuple(
        Line(f"{measure} to inner step 0, per layer", tuple(f"inner/{measure}/{layer}" for layer in LAYERS),
             x="inner_step") for measure in measures) + (Media("inner-loop change (figures)",
                                                           tuple(f"analysis/inner_{m}" for m in measures)),))
    across = Section("Change over meta-training", tuple(
        Line(f"{measure} {what}, per layer", tuple(f"training/{measure}_{what}/{layer}" for layer in LAYERS),
             x="meta_step")
        for measure in measures for what in (f"inner{inner}", "from_previous", "from_start")))
    return Dashboard("maml", (learning, within, across), group_by=("experiment", "algorithm"), outcome="test/acc")
