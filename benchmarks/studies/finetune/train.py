"""Executing one run: ``pretrain`` (source task, weights kept every epoch) and ``finetune`` (a target, a mode).

Both track the per-layer similarity of the probe set's representations (the task's test images) every
epoch: pretraining against the initial network, fine-tuning against the network at the start of
fine-tuning and a freshly initialised one. Curves and layer x epoch heatmaps go to W&B.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import Dataset

from benchmarks.core.errors import UserError
from benchmarks.core.runstore import atomic_save_state
from benchmarks.core.study import Run, RunContext, global_rank
from benchmarks.core.training import KeepWeights, weight_file
from benchmarks.studies.finetune.analyse import epoch_rows
from benchmarks.studies.finetune.data import build_task, datamodule, normalisation
from callbacks import RandomInitReference, RepresentationSnapshot, SimilarityTracker


class EpochSimilarityTracker(SimilarityTracker):
    """A SimilarityTracker that skips its end-of-fit curve PNGs: W&B draws the per-layer curves from the
    logged scalars and the report draws them over seeds, so the figures would only cost time (~1 s each)."""

    def on_snapshots_end(self, latest, trainer, module) -> None:
        return None


def execute(run: Run, ctx: RunContext) -> dict[str, float]:
    L.seed_everything(ctx.seed, workers=True, verbose=False)
    if run.stage == "pretrain":
        return pretrain(run, ctx)
    return finetune(run, ctx)


def similarity_callbacks(run_dir: Path, probe: Dataset, references: dict, sim_cfg: dict, resuming: bool):
    """A snapshot callback on the probe set and one tracker per measure (rows survive a resume).

    References are explicit weights, never "the first snapshot", so a resumed fit compares with the
    true start; it also takes no fit-start snapshot (the start is already in the saved rows).
    """
    snapshot = RepresentationSnapshot(probe, probe_size=int(sim_cfg["probe_size"]),
                                      seed=int(sim_cfg["probe_seed"]), save=False, every_n_epochs=1,
                                      pooling=sim_cfg.get("pooling", "flatten"),
                                      at_fit_start=not resuming, at_fit_end=True, keep=1)
    trackers = {}
    for measure in sim_cfg["measures"]:
        out_dir = run_dir / f"similarity_{measure}"
        tracker = EpochSimilarityTracker(references, measure, snapshots=snapshot, prefix=measure, heatmaps="never",
                                         out_dir=out_dir)
        previous = out_dir / "similarity.json"
        if previous.exists():  # resumed: keep the rows of the epochs already done
            tracker.rows = list(json.loads(previous.read_text())["rows"])
        trackers[measure] = tracker
    return snapshot, trackers


def log_layer_epoch_heatmaps(ctx: RunContext, trainer, rows: list[dict], measure: str, layers: list[str]) -> None:
    """One figure of layer x epoch heatmaps, a panel per reference (PNG + wandb Image), and a wandb Table
    per reference (``<measure>/<reference>/layer_epoch_table``)."""
    from callbacks.plots import draw_heatmap, new_figure
    from callbacks.run_outputs import RunOutputs

    outputs = RunOutputs(trainer, ctx.run_dir)
    references = sorted({r["reference"] for r in rows})
    if not references:
        return
    epochs = sorted({r["x"] for r in rows})
    figure = new_figure(1.2 + 0.45 * len(epochs) * len(references) + 2.5 * len(references), 0.4 * len(layers) + 2)
    for index, reference in enumerate(references):
        value = {(r["layer"], r["x"]): r["value"] for r in rows if r["reference"] == reference}
        matrix = np.array([[value.get((f"net.{layer}", e), math.nan) for e in epochs] for layer in layers])
        ax = figure.add_subplot(1, len(references), index + 1)
        draw_heatmap(ax, matrix, layers, [str(e) for e in epochs], cbar_label=measure, vmin=0.0, vmax=1.0,
                     annotate=len(epochs) <= 12)
        ax.set_xlabel("epoch")
        ax.set_title(f"{measure} with {reference}")
        outputs.table(f"{measure}/{reference}/layer_epoch_table",
                      [{"layer": layer, **{f"epoch{e}": float(matrix[i, j]) for j, e in enumerate(epochs)}}
                       for i, layer in enumerate(layers)])
    outputs.figure(f"heatmap_{measure}.png", figure, wandb_key=f"{measure}/layer_epoch_heatmap")


@torch.no_grad()
def accuracy(module: torch.nn.Module, dataset: Dataset, batch_size: int = 256) -> float:
    """Top-1 accuracy in eval mode (train/eval flags restored)."""
    from torch.utils.data import DataLoader

    flags = {m: m.training for m in module.modules()}
    device = next(module.parameters()).device
    module.eval()
    correct = total = 0
    try:
        for batch in DataLoader(dataset, batch_size=batch_size):
            logits = module(batch[0].to(device)).cpu()
            correct += int((logits.argmax(1) == batch[1]).sum())
            total += len(batch[1])
    finally:
        for m, flag in flags.items():
            m.training = flag
    return correct / max(total, 1)


def build_module(config: dict, num_classes: int, train_cfg: dict, mode: str = "full", seed: int = 0):
    from modules.classification import ClassificationModule

    model = config["model"]
    return ClassificationModule(
        model["backbone"], num_classes, in_channels=int(model["in_channels"]),
        image_size=int(model["image_size"]), hidden=int(model.get("hidden", 64)),
        pretrained=bool(model.get("pretrained", False)), lr=float(train_cfg["lr"]),
        optimizer=train_cfg["optimizer"], weight_decay=float(train_cfg.get("weight_decay", 0.0)),
        scheduler=train_cfg.get("scheduler", "none"), finetune_mode=mode,
        trainable=train_cfg.get("trainable"), lower_layers=train_cfg.get("lower_layers"),
        head_policy=train_cfg.get("head_policy", "reinit"), head_seed=seed)


def source_normalisation(config: dict) -> tuple[float, float]:
    source = config["source"]
    return normalisation(source["dataset"], tuple(source["classes"]), int(config["model"]["image_size"]),
                         int(source["split_seed"]), config.get("data_root"))


def pretrain(run: Run, ctx: RunContext) -> dict[str, float]:
    config, seed = run.config, ctx.seed
    source = config["source"]
    task = build_task({**source, "labels": "clean"}, source, role="source", seed=seed,
                      image_size=int(config["model"]["image_size"]), split_seed=int(source["split_seed"]),
                      norm=source_normalisation(config), data_root=config.get("data_root"))
    module = build_module(config, task.num_classes, source, "full", seed)
    weights = ctx.run_dir / "weights"
    init = weight_file(weights, 0, "epoch")  # written now: the "init" reference of the similarity trackers
    if not init.exists() and global_rank() == 0:
        atomic_save_state(init, module.state_dict())
    refs = {"init": str(init)}
    probe, resume = task.datasets["test"], ctx.resume_path()
    snapshot, trackers = similarity_callbacks(ctx.run_dir, probe, refs, config["similarity"], resume is not None)
    keep = KeepWeights(weights, range(1, int(source["epochs"]) + 1), unit="epoch")
    tested = _fit_and_test(ctx, module, task, seed, source, [keep, snapshot], trackers, resume)
    if global_rank() == 0:
        atomic_save_state(ctx.run_dir / "encoder.pt", module.state_dict())
    metrics = {"source_test_acc": float(tested["test/acc"]),
               "source_train_acc": accuracy(module, task.datasets["train"])}
    metrics.update(final_similarities(trackers))
    return metrics


def _fit_and_test(ctx: RunContext, module, task, seed: int, stage: dict, callbacks: list, trackers: dict,
                  resume: str | None) -> dict:
    """Train ``module`` on ``task`` for the stage's epochs (resuming from ``resume``), test it, and log each
    similarity tracker's layer x epoch heatmap: the sequence pretraining and fine-tuning share."""
    trainer = ctx.trainer(max_epochs=int(stage["epochs"]), callbacks=[*callbacks, *trackers.values()],
                          limit_train_batches=stage.get("limit_batches"),
                          limit_val_batches=stage.get("limit_batches"))
    dm = datamodule(task, seed, int(stage["batch_size"]))
    trainer.fit(module, datamodule=dm, ckpt_path=resume)
    tested = trainer.test(module, datamodule=dm, verbose=False)[0]
    for measure, tracker in trackers.items():
        log_layer_epoch_heatmaps(ctx, trainer, epoch_rows(tracker.rows), measure, module.layer_names)
    return tested


def finetune(run: Run, ctx: RunContext) -> dict[str, float]:
    config, seed = run.config, ctx.seed
    ft, target = config["finetune"], config["target"]
    task = build_task(target, ft, role="target", seed=seed, image_size=int(config["model"]["image_size"]),
                      split_seed=int(config["source"]["split_seed"]), norm=source_normalisation(config),
                      data_root=config.get("data_root"))
    module = build_module(config, task.num_classes, ft, ft["mode"], seed)
    pretrained = pretrained_weights(ctx.output_of(run.needs[0]), ft.get("from_epoch", "last"))
    module.load_pretrained(pretrained, ft.get("head_policy", "reinit"))
    start_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    refs = {"start": start_state, "random_init": RandomInitReference(seed=10_000 + seed)}
    probe, resume = task.datasets["test"], ctx.resume_path()
    snapshot, trackers = similarity_callbacks(ctx.run_dir, probe, refs, config["similarity"], resume is not None)
    tested = _fit_and_test(ctx, module, task, seed, ft, [snapshot], trackers, resume)
    start_net = {k[len("net."):]: v for k, v in start_state.items() if k.startswith("net.")}
    changed = [k for k, v in module.frozen_state().items() if not torch.equal(start_net[k], v.cpu())]
    metrics = {"test_acc": float(tested["test/acc"]),
               "train_acc": accuracy(module, task.datasets["train"]),
               "label_agreement": task.label_agreement, "frozen_params_changed": float(len(changed)),
               "trainable_groups": float(len(module.trainable_groups))}
    metrics.update(final_similarities(trackers))
    metrics.update({f"depth.{layer}": float(i) for i, layer in enumerate(module.layer_names)})
    return metrics


def pretrained_weights(pretrain_dir: Path, from_epoch: Any) -> Path:
    if from_epoch in (None, "last"):
        path = pretrain_dir / "encoder.pt"
    else:
        path = weight_file(pretrain_dir / "weights", from_epoch, "epoch")
    if not path.exists():
        kept = sorted(p.stem for p in (pretrain_dir / "weights").glob("epoch*.pt"))
        raise UserError(f"no pretraining weights {path}", f"set finetune.from_epoch to last or one of {kept}")
    return path


def final_similarities(trackers: dict) -> dict[str, float]:
    """``<measure>.<reference>.<layer>`` at the last snapshot of the fit."""
    out = {}
    for measure, tracker in trackers.items():
        rows = epoch_rows(tracker.rows)
        if not rows:
            continue
        last = max(r["x"] for r in rows)
        for r in rows:
            if r["x"] == last:
                out[f"{measure}.{r['reference']}.{r['layer'].removeprefix('net.')}"] = float(r["value"])
    return out
