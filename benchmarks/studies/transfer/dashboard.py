"""The what-is-transferred study's W&B dashboard: source pretraining, target learning curves per arm and block
size with bands over seeds, accuracy against block size, CKA per layer and interpolation curves per pair kind
(with the barrier), module criticality."""

from __future__ import annotations

from benchmarks.core.dashboards import Dashboard, Line, Media, Scatter, Section
from benchmarks.studies.transfer.protocol import PAIR_KINDS


def dashboard(cfg: dict) -> Dashboard:
    learning = Section("Pretraining and target training", (
        Line("source accuracy over pretraining", ("pretrain/source_acc",), x="pretrain/step"),
        Line("target validation accuracy", ("val/acc",)),
        Line("target training loss", ("train/loss_epoch",), log_y=True),
        Scatter("final test accuracy against block size", "params.block", "final/test_acc"),
        Scatter("training speed (mean early accuracy) against block size", "params.block", "final/speed_val_acc"),
    ))
    pairs = Section("Feature similarity and interpolation", (
        Line("linear CKA per layer, mean over pairs of each kind", tuple(f"cka/{k}" for k in PAIR_KINDS),
             x="cka/layer_index"),
        Line("weight distance per layer, mean over pairs of each kind", tuple(f"l2/{k}" for k in PAIR_KINDS),
             x="l2/layer_index"),
        *(Line(f"interpolation {kind}: test error against lambda (the bump is the barrier)",
               (f"interp_mean/{kind}/error",), x=f"interp_mean/{kind}/lambda") for kind in PAIR_KINDS),
        Media("CKA per layer (figure)", ("cka/bars",)),
    ))
    criticality = Section("Module criticality", (
        Line("criticality per module (input side first)", ("crit/criticality",), x="crit/module_index"),
        Media("criticality heatmaps (alpha x sigma)", ("crit/heatmaps",)),
    ))
    return Dashboard("transfer", (learning, pairs, criticality), group_by=("source", "init", "block"),
                     outcome="final/test_acc")
