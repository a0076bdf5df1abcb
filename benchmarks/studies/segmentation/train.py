"""Study 1's training: a source task (stage ``source``) and one fine-tuning variant (stage ``target``).

Both stages train to a plateau under one rule: AdamW with a cosine learning-rate decay over the epoch budget,
early stopping on the validation metric (``patience`` epochs without improvement), and the weights of the best
validation epoch are what is used afterwards (handed on by a source, tested by a target run).

- ``source``: a U-Net-shaped network learns a source task on the source scene domain and hands on its
  encoder (and decoder) as ``parts.pt``: ``classification`` (scene -> object class, encoder only),
  ``segmentation`` (encoder + decoder), ``reconstruction`` (masked, denoising autoencoder, encoder +
  decoder), ``contrastive`` (NT-Xent on two augmented views + denoising/inpainting/colourisation heads on
  the decoder, no labels; encoder + decoder). Early stopping watches each task's validation loss.
- ``target``: a SegmentationModule is fine-tuned on the target domain with its encoder from a source
  and its decoder random or transferred from the same source (or the frozen-random-encoder control).
  Early stopping watches validation Dice. Before and after fine-tuning, every encoder stage's output on a
  fixed probe batch is recorded and compared with linear CKA: how much each source's encoder had to change.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Sequence
from typing import Any

from lightning.pytorch import Callback

from benchmarks.core.errors import UserError
from benchmarks.core.runstore import atomic_save_state, atomic_write_text
from benchmarks.core.study import Run, RunContext, global_rank
from benchmarks.core.training import epoch_checkpoint
from benchmarks.studies.segmentation.protocol import PLATEAU_EPOCHS, SOURCE_PLATEAU_EPOCHS, TASK_TRAINING_KEYS


# ============================================================================================ data
def make_datamodule(cfg: dict, domain: str, *, n_train: int, n_val: int, n_test: int, label_fraction: float,
                    seed: int, batch_size: int, min_train_batches: int = 0):
    """The datamodule of one domain: the source is always the embedded source scenes; the target is the embedded
    target scenes (``data.kind: scenes``) or Oxford-IIIT Pet pet/background segmentation (``oxford_pet``, its
    validation split fixed, the labelled subset drawn by ``seed``). ``min_train_batches`` repeats a small
    labelled subset so every label fraction takes the same optimiser steps per epoch."""
    from datamodules.scenes import SceneDataModule

    # [0, 1] images: the modules normalise themselves (augmentations and reconstruction work in [0, 1])
    if domain == "target" and cfg["data"]["kind"] == "oxford_pet":
        from datamodules.fullscale import OxfordPetDataModule

        return OxfordPetDataModule(data_root=cfg["data_root"], task="segmentation",
                                   image_size=cfg["data"]["image_size"], seed=seed, batch_size=batch_size,
                                   split_seed=0, n_train=n_train, n_val=n_val, n_test=max(n_test, 1),
                                   label_fraction=label_fraction, min_train_batches=int(min_train_batches),
                                   mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return SceneDataModule(domain=domain, n_train=n_train, n_val=n_val, n_test=max(n_test, 1),
                           label_fraction=label_fraction, seed=seed, image_size=cfg["data"]["image_size"],
                           batch_size=batch_size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                           min_train_batches=int(min_train_batches))


def _source_classes(dm) -> int:
    for attr in ("num_classes", "n_classes"):
        if hasattr(dm, attr):
            return int(getattr(dm, attr))
    raise UserError("the source datamodule does not say how many object classes it has",
                    "give it a num_classes attribute (SceneDataModule has one)")


def _mask_classes(dm) -> int:
    for attr in ("num_mask_classes", "mask_classes", "segmentation_classes"):
        if hasattr(dm, attr):
            return int(getattr(dm, attr))
    return 2


# ============================================================================================ runs
def _trainer_limits(cfg: dict) -> dict:
    limit = cfg.get("limit_batches")
    if limit is None:
        return {}
    return {"limit_train_batches": limit, "limit_val_batches": limit, "limit_test_batches": limit}


def set_threads(setting: int | str | None) -> int:
    """Apply ``threads`` (an int, or ``auto``/null) to torch's intra-op pool; return the thread count used.

    ``auto`` keeps torch's default unless other processes keep at least half the cores busy: then 1 thread.
    Under contention, OpenMP worker threads that spin while waiting for each other made a training step of
    this U-Net 10x slower with 2 threads than with 1 (measured on 2 shared cores). On a quiet machine 2
    threads are 1.4x faster than 1, so the count must not include this process's own load.
    """
    import os

    import torch

    if setting in (None, "auto"):
        cores = os.cpu_count() or 1
        threads = 1 if other_runnable_tasks() >= cores / 2 else torch.get_num_threads()
    else:
        threads = int(setting)
        if threads < 1:
            raise UserError(f"threads={setting} must be >= 1", "set threads to a positive number or auto")
    torch.set_num_threads(threads)
    return threads


def other_runnable_tasks(samples: int = 9, interval: float = 0.02) -> float:
    """Median number of runnable tasks on the machine besides this one (``/proc/loadavg``'s running count;
    the 1-minute load average minus one where that file is missing)."""
    import os
    import statistics

    counts = []
    for _ in range(samples):
        try:
            with open("/proc/loadavg") as f:
                running = int(f.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return max(0.0, os.getloadavg()[0] - 1) if hasattr(os, "getloadavg") else 0.0
        counts.append(running - 1)  # this process, reading the file, is one of them
        time.sleep(interval)
    return float(statistics.median(counts))


class ValHistory(Callback):
    """The validation metrics (``val/*``) and the optimiser step after every validation epoch, kept in
    checkpoints so a resumed run has its whole curve."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        row = {"epoch": int(trainer.current_epoch), "step": int(trainer.global_step)}
        row.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
        if self.rows and self.rows[-1]["epoch"] == row["epoch"]:
            self.rows[-1] = row
        else:
            self.rows.append(row)

    def state_dict(self) -> dict:
        return {"rows": list(self.rows)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.rows = list(state_dict.get("rows", []))


def _trainer(ctx: RunContext, cfg: dict, epochs: int, monitor: str, mode: str, patience: int,
             every: int | None = None, extra: list | None = None, **kwargs: Any):
    """A Trainer that stops early on ``monitor`` (``patience`` epochs without improvement), keeps the weights of
    the best validation epoch in ``checkpoints/best.pt`` and a resume checkpoint (``last.ckpt``) every
    ``checkpoint_every`` epochs and at the end. Returns (trainer, best-checkpoint callback). The best weights
    are not a resume point (no optimiser or loop state), hence not a ``.ckpt``."""
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    every = int(every or cfg.get("checkpoint_every") or 1)
    directory = ctx.store.checkpoint_dir(ctx.run.key)
    best = ModelCheckpoint(dirpath=directory, filename="best", monitor=monitor, mode=mode, save_top_k=1,
                           save_weights_only=True, enable_version_counter=False)
    best.FILE_EXTENSION = ".pt"
    stop = EarlyStopping(monitor=monitor, mode=mode, patience=patience, min_delta=0.0)
    # best before the resume checkpoint: both save at the end of a training epoch, and last.ckpt must carry the
    # best-weights callback's state of that epoch (else a resumed run forgets which epoch was best)
    callbacks = [best, epoch_checkpoint(directory, every), stop, *(extra or [])]
    trainer = ctx.trainer(max_epochs=epochs, checkpoint=False, callbacks=callbacks, num_sanity_val_steps=0,
                          **_trainer_limits(cfg), **kwargs)
    return trainer, best


def load_best(module, best) -> int:
    """Load the best validation epoch's weights into ``module``; return that epoch (1-based, 0 if none kept)."""
    import torch

    path = best.best_model_path
    if not path:
        return 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    module.load_state_dict(state["state_dict"])
    return int(state.get("epoch", -1)) + 1


def plateau_change(curve: Sequence[float], window: int, higher_is_better: bool = True) -> float:
    """How much the best value improved within the last ``window`` epochs over the best before them (NaN for a
    curve of at most ``window`` epochs). At most the tolerance = the curve had plateaued."""
    values = [v for v in curve if v is not None and not math.isnan(v)]
    if len(values) <= window:
        return math.nan
    sign = 1.0 if higher_is_better else -1.0
    before, last = max(sign * v for v in values[:-window]), max(sign * v for v in values[-window:])
    return max(0.0, last - before)


def _module_common(cfg: dict) -> dict:
    model = cfg["model"]
    return {"encoder": model["encoder"], "decoder_channels": list(model["decoder_channels"]),
            "input_mean": list(model["input_mean"]), "input_std": list(model["input_std"])}


def execute_source(run: Run, ctx: RunContext) -> dict[str, float]:
    """Train one source task to a plateau (one budget rule for every task) and save what it hands on, the
    weights of its best validation epoch, to ``<run_dir>/parts.pt``."""
    import lightning as L

    from modules.pretext import build_source_module, export_parts

    cfg = dict(run.config)
    task = cfg["task"]
    options = dict(cfg.get("task_options") or {})
    # a task may override the shared learning rate or batch size (e.g. a lower rate where NT-Xent is unstable)
    src = {**cfg["source"], **{k: options.pop(k) for k in TASK_TRAINING_KEYS if k in options}}
    seed = int(src["seed"])
    threads = set_threads(cfg.get("threads"))  # first: every tensor op of the run uses the same thread count
    L.seed_everything(seed, workers=True, verbose=False)
    dm = make_datamodule(cfg, "source", n_train=src["n_train"], n_val=src["n_val"], n_test=0, label_fraction=1.0,
                         seed=seed, batch_size=src["batch_size"])
    dm.prepare_data()
    dm.setup("fit")
    common = {**_module_common(cfg), "lr": src["lr"], "schedule": "cosine"}
    if task == "classification":
        module = build_source_module(task, num_classes=_source_classes(dm), **common)
    elif task == "segmentation":
        module = build_source_module(task, classes=_mask_classes(dm), **common)
    elif task in ("contrastive", "reconstruction"):
        module = build_source_module(task, seed=seed, **common, **options)
    else:
        module = build_source_module(task, **common)
    history = ValHistory()
    trainer, best = _trainer(ctx, cfg, src["epochs"], "val/loss", "min", int(src["patience"]), every=1,
                             extra=[history])
    start = time.time()
    trainer.fit(module, datamodule=dm, ckpt_path=ctx.resume_path())
    train_seconds = time.time() - start
    best_epoch = load_best(module, best)
    rows = history.rows
    at_best = rows[best_epoch - 1] if 0 < best_epoch <= len(rows) else (rows[-1] if rows else {})
    losses = [r.get("val/loss", math.nan) for r in rows]
    change = plateau_change(losses, SOURCE_PLATEAU_EPOCHS, higher_is_better=False)
    best_loss = float(at_best.get("val/loss", math.nan))
    parts_file = ctx.run_dir / "parts.pt"
    if global_rank() == 0:
        export_parts(module, parts_file, {"task": task, "encoder": cfg["model"]["encoder"],
                                          "decoder_channels": list(cfg["model"]["decoder_channels"]),
                                          "run_key": run.key, "best_epoch": best_epoch})
        atomic_write_text(ctx.run_dir / "curves.json", json.dumps({"history": rows}, indent=1))
    metrics = {f"best_{k.replace('/', '_')}": float(v) for k, v in at_best.items() if k.startswith("val/")}
    metrics.update({"best_epoch": float(best_epoch), "epochs_run": float(len(rows)),
                    "max_epochs": float(src["epochs"]), "plateau_change": change,
                    "plateau_change_relative": change / abs(best_loss) if best_loss else math.nan,
                    "train_seconds": train_seconds, "threads": float(threads)})
    metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")})
    return metrics


def _probe_images(dm, size: int):
    import torch

    from modules.segmentation import unpack_batch

    images = []
    for batch in dm.test_dataloader():  # the held-out test images: fixed, never trained on
        x, _, _ = unpack_batch(batch)
        images.append(x)
        if sum(len(i) for i in images) >= size:
            break
    return torch.cat(images)[:size]


def encoder_stage_cka(before: dict, after: dict) -> dict[str, float]:
    """Linear CKA per encoder stage between two captures of the same probe batch."""
    from similarity import compare_representations

    return {name: v["linear_cka"] for name, v in compare_representations(before, after, "linear_cka").items()}


def execute_target(run: Run, ctx: RunContext) -> dict[str, float]:
    """Fine-tune one variant on the target domain to a plateau (cosine decay, early stopping on validation Dice)
    and test the best validation epoch's weights; record the curve, test Dice/IoU with the per-image spread,
    and encoder-stage CKA before vs after."""
    import lightning as L

    from analysis.representations import capture_representations
    from modules.segmentation import SegmentationModule

    cfg = dict(run.config)
    p = {**run.params, **cfg["init"]}
    tgt = cfg["target"]
    seed = int(p["seed"])
    threads = set_threads(cfg.get("threads"))  # first: every tensor op of the run uses the same thread count
    L.seed_everything(seed, workers=True, verbose=False)
    dm = make_datamodule(cfg, "target", n_train=tgt["n_train"], n_val=tgt["n_val"], n_test=tgt["n_test"],
                         label_fraction=float(p["fraction"]), seed=seed, batch_size=tgt["batch_size"],
                         min_train_batches=int(tgt.get("min_steps_per_epoch", 0)))
    dm.prepare_data()
    dm.setup("fit")
    parts = str(ctx.output_of(run.needs[0]) / "parts.pt") if run.needs else None
    encoder_init = {"random": "random", "imagenet": "imagenet"}.get(p["encoder"], "checkpoint")
    module = SegmentationModule(
        **_module_common(cfg), classes=_mask_classes(dm), encoder_init=encoder_init,
        decoder_init="checkpoint" if p["decoder"] == "transferred" else "random",
        encoder_checkpoint=parts if encoder_init == "checkpoint" else None,
        decoder_checkpoint=parts if p["decoder"] == "transferred" else None,
        freeze=p["freeze"], frozen_norms=str(tgt["frozen_norms"]), schedule="cosine", lr=tgt["lr"],
        allow_download=bool(cfg["imagenet"]["allow_download"]))
    layers = module.default_watch_layers()
    probe = _probe_images(dm, int(cfg["analysis"]["probe_size"]))
    before_file = ctx.run_dir / "encoder_before.pt"
    import torch

    if before_file.exists():  # a resumed run: the capture of the initial encoder was saved
        before = torch.load(before_file, weights_only=True)
    else:
        before = capture_representations(module, layers, probe, pooling="flatten")
        if global_rank() == 0:
            atomic_save_state(before_file, before)
    trainer, best = _trainer(ctx, cfg, tgt["epochs"], "val/dice", "max", int(tgt["patience"]))
    start = time.time()
    trainer.fit(module, datamodule=dm, ckpt_path=ctx.resume_path())
    train_seconds = time.time() - start
    steps_per_epoch = int(trainer.num_training_batches)
    history = list(module.history)  # loading the best weights below leaves the curve alone
    best_epoch = load_best(module, best)
    test = trainer.test(module, datamodule=dm, verbose=False)[0]
    per_image = [v for v in module.test_image_dice if not math.isnan(v)]
    after = capture_representations(module, layers, probe, pooling="flatten")
    cka = encoder_stage_cka(before, after)
    curve = [row.get("val/dice") for row in history]
    stage_cka = {f"cka/stage{i}": v for i, v in enumerate(cka.values(), 1)}
    _log_cka(ctx, list(cka.values()))
    if global_rank() == 0:
        atomic_write_text(ctx.run_dir / "curves.json", json.dumps({"history": history, "cka": cka,
                                                                   "test_image_dice": per_image}, indent=1))
    image_sd = statistics.stdev(per_image) if len(per_image) > 1 else math.nan
    metrics = {"test_dice": float(test["test/dice"]), "test_iou": float(test["test/iou"]),
               "test_image_dice_sd": image_sd, "test_dice_se": image_sd / math.sqrt(len(per_image))
               if per_image else math.nan, "n_test_images": float(len(per_image)),
               "final_val_dice": float(curve[-1]) if curve else math.nan,
               "best_val_dice": float(max(curve)) if curve else math.nan,
               "best_epoch": float(best_epoch), "epochs_run": float(len(curve)), "max_epochs": float(tgt["epochs"]),
               "steps_per_epoch": float(steps_per_epoch), "max_steps": float(steps_per_epoch * int(tgt["epochs"])),
               "plateau_change": plateau_change(curve, PLATEAU_EPOCHS),
               "frozen_norms_eval": float(tgt["frozen_norms"] == "eval"),
               "n_labelled": float(_n_labelled(dm)), "train_seconds": train_seconds, "threads": float(threads),
               **stage_cka}
    return metrics


def _n_labelled(dm) -> int:
    for attr in ("n_labelled", "num_labelled"):
        if hasattr(dm, attr):
            return int(getattr(dm, attr))
    try:
        return len(dm.train_dataloader().dataset)
    except Exception:  # noqa: BLE001 - only informative
        return -1


def _log_cka(ctx: RunContext, values: list[float]) -> None:
    """Per-stage CKA against its own x-axis (stage index) plus a table, on the run's W&B run."""
    out = ctx.outputs()
    out.define_curve("cka", "cka/stage_index", ["cka/encoder_before_vs_after"])
    for i, v in enumerate(values, 1):
        out.log({"cka/stage_index": i, "cka/encoder_before_vs_after": v})
    out.table("cka/table", [{"stage": i, "linear_cka": v} for i, v in enumerate(values, 1)])


def execute(run: Run, ctx: RunContext) -> dict[str, float]:
    """Run one planned run of either stage; torch's thread count is restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    try:
        if run.stage == "source":
            return execute_source(run, ctx)
        return execute_target(run, ctx)
    finally:
        torch.set_num_threads(threads)  # ``threads: auto`` may have lowered it for this run only
