"""Study 1: segmentation transfer, "choose the right encoder, skip the decoder" (``make bench-segmentation``).

After Dippel et al., "Transfer learning for segmentation problems: Choose the right encoder and skip the
decoder" (arXiv 2207.14508). Protocol (/work/shared/STUDIES.md, study 1):

1. ``source`` (one run per source task, trained once; its key depends only on its config, so it is
   cached across benchmark runs): a U-Net-shaped network learns a source task on the source scene
   domain and hands on its encoder (and decoder) as ``parts.pt``: ``classification`` (scene -> object
   class, encoder only), ``segmentation`` (encoder + decoder), ``reconstruction`` (autoencoder, encoder +
   decoder), ``contrastive`` (NT-Xent on two augmented views + denoising/inpainting/colourisation heads on
   the decoder, no labels; encoder + decoder). ``imagenet`` uses real EfficientNet-Lite0 weights and
   ``random`` nothing: neither needs a source run.
2. ``target`` (variant x label fraction x seed): a SegmentationModule is fine-tuned on the target domain
   with its encoder from a source and its decoder random or transferred from the same source; plus the
   control "frozen random encoder + trained decoder". The same seed gives the same labelled subset and
   the same fresh parts for every variant, so variants are compared pairwise by seed. Before and after
   fine-tuning, every encoder stage's output on a fixed probe batch is recorded and compared with
   linear CKA: how much each source's encoder had to change.

The report gives test Dice/IoU per variant (mean ± std, 95% CI), learning curves with bands, epochs to
95% of the final validation Dice, paired comparisons and verdicts for the study's three findings,
computed from the runs (``findings`` section of the profile sets the equivalence margin).
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.errors import UserError, unknown_name
from benchmarks.report import Finding, figure, findings_table, header, save_figure, table, write_csv
from benchmarks.report import terminal_table as _terminal_table
from benchmarks.runstore import RunStore, atomic_save_state, atomic_write_text
from benchmarks.stats import Estimate, mean_ci, paired_difference, verdict_greater
from benchmarks.study import Run, RunContext, Study, global_rank

ENCODER_SOURCES = ("random", "imagenet", "classification", "segmentation", "reconstruction", "contrastive")
SOURCE_TASKS = ("classification", "segmentation", "reconstruction", "contrastive")
DECODER_SOURCES = ("segmentation", "reconstruction", "contrastive")  # sources that train a decoder
CONTROLS = ("frozen_random_encoder",)
LABEL_FREE = ("reconstruction", "contrastive")
TASK_TRAINING_KEYS = ("epochs", "lr", "batch_size")  # source_tasks.<task> may override these of source


# ============================================================================================ plan
def variant_name(encoder: str, decoder: str, freeze: str = "none") -> str:
    """``encoder/decoder`` (+ ``/frozen-encoder``): the name used in tables, figures and run keys."""
    name = f"{encoder}/{decoder}"
    return name + ("/frozen-encoder" if freeze == "encoder" else "")


def variants(cfg: dict) -> list[dict]:
    """The fine-tuning variants of the grid: every encoder source x decoder (random, transferred if any),
    then the controls."""
    grid = cfg["grid"]
    out = []
    for encoder in grid["encoder_sources"]:
        if encoder not in ENCODER_SOURCES:
            raise unknown_name("encoder source (grid.encoder_sources)", encoder, ENCODER_SOURCES)
        decoders = ["random"]
        if grid.get("transfer_decoder", True) and encoder in DECODER_SOURCES:
            decoders.append("transferred")
        for decoder in decoders:
            out.append({"variant": variant_name(encoder, decoder), "encoder": encoder, "decoder": decoder,
                        "freeze": "none"})
    for control in grid.get("controls") or []:
        if control not in CONTROLS:
            raise unknown_name("control (grid.controls)", control, CONTROLS)
        out.append({"variant": variant_name("random", "random", "encoder"), "encoder": "random",
                    "decoder": "random", "freeze": "encoder"})
    return out


def _source_config(cfg: dict, task: str) -> dict:
    """Everything a source run depends on, and nothing else (so its key, and its cache, stay put)."""
    options = (cfg.get("source_tasks") or {}).get(task) or {}
    return {"task": task, "model": cfg["model"], "data": cfg["data"], "source": cfg["source"],
            "task_options": options, "limit_batches": cfg.get("limit_batches"),
            "checkpoint_every": cfg.get("checkpoint_every"), "threads": cfg.get("threads")}


def _source_run(cfg: dict, task: str) -> Run:
    config = _source_config(cfg, task)
    return Run("segmentation", "source", {"task": task}, config)


def needed_sources(cfg: dict) -> list[str]:
    wanted = {v["encoder"] for v in variants(cfg)}  # a transferred decoder comes from the encoder's source
    return [t for t in SOURCE_TASKS if t in wanted]


def _check_fractions(fractions: Sequence[float]) -> list[float]:
    out = []
    for f in fractions:
        if not isinstance(f, int | float) or not 0 < float(f) <= 1:
            raise UserError(f"label fraction {f!r} is not in (0, 1]",
                            "set target.label_fractions to numbers in (0, 1], e.g. [0.25, 1.0]")
        out.append(float(f))
    return sorted(out)


# ============================================================================================ data
def make_datamodule(cfg: dict, domain: str, *, n_train: int, n_val: int, n_test: int, label_fraction: float,
                    seed: int, batch_size: int, min_train_batches: int = 0):
    """The datamodule of one domain (``data.kind``: ``scenes`` = embedded composite scenes; ``oxford_pet``
    and other full-scale sets come from datamodules.fullscale under the data root). ``min_train_batches``
    repeats a small labelled subset so every label fraction takes the same optimiser steps per epoch."""
    dm = _datamodule(cfg, domain, n_train=n_train, n_val=n_val, n_test=n_test, label_fraction=label_fraction,
                     seed=seed, batch_size=batch_size)
    if min_train_batches and not hasattr(dm, "min_train_batches"):
        raise UserError(f"the {type(dm).__name__} of data.kind {cfg['data'].get('kind')!r} cannot repeat small "
                        "labelled subsets", "set target.min_steps_per_epoch: 0, or derive it from ArrayDataModule")
    if hasattr(dm, "min_train_batches"):
        dm.min_train_batches = int(min_train_batches)
    return dm


def _datamodule(cfg: dict, domain: str, *, n_train: int, n_val: int, n_test: int, label_fraction: float,
                seed: int, batch_size: int):
    data = cfg["data"]
    kind = data.get("kind", "scenes")
    if kind == "scenes":
        from datamodules.scenes import SceneDataModule

        # [0, 1] images: the modules normalise themselves (augmentations and reconstruction work in [0, 1])
        return SceneDataModule(domain=domain, n_train=n_train, n_val=n_val, n_test=max(n_test, 1),
                               label_fraction=label_fraction, seed=seed, image_size=data["image_size"],
                               batch_size=batch_size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    try:
        from datamodules import fullscale
    except ImportError as err:
        raise UserError(f'data.kind "{kind}" needs datamodules/fullscale.py, which is not available',
                        'use data.kind: scenes (the embedded data)') from err
    factory = getattr(fullscale, "segmentation_datamodule", None)
    if factory is None:
        raise UserError(f'datamodules.fullscale has no segmentation datamodule for data.kind "{kind}"',
                        "use data.kind: scenes, or add segmentation_datamodule(...) to datamodules/fullscale.py")
    return factory(kind=kind, domain=domain, data_root=cfg.get("data_root"), n_train=n_train, n_val=n_val,
                   n_test=n_test, label_fraction=label_fraction, seed=seed, image_size=data["image_size"],
                   batch_size=batch_size)


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


def _every_k_and_last_checkpoint(dirpath: Path, every: int):
    """``last.ckpt`` after every ``every``-th epoch and after the final one (the resume point)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    class EveryKAndLast(ModelCheckpoint):
        def on_train_epoch_end(self, trainer, pl_module) -> None:
            done = trainer.current_epoch + 1
            if done % every == 0 or (trainer.max_epochs is not None and done >= trainer.max_epochs):
                super().on_train_epoch_end(trainer, pl_module)

    return EveryKAndLast(dirpath=dirpath, filename="last", save_top_k=1, every_n_epochs=1, save_last=False,
                         enable_version_counter=False, save_on_train_epoch_end=True)


def _trainer(ctx: RunContext, cfg: dict, epochs: int, every: int | None = None, **kwargs: Any):
    """A Trainer from the run context that checkpoints every ``checkpoint_every`` epochs and at the end."""
    every = int(every or cfg.get("checkpoint_every") or 1)
    checkpoint = _every_k_and_last_checkpoint(ctx.store.checkpoint_dir(ctx.run.key), every)
    return ctx.trainer(max_epochs=epochs, checkpoint=False, callbacks=[checkpoint], **_trainer_limits(cfg),
                       **kwargs)


def _module_common(cfg: dict) -> dict:
    model = cfg["model"]
    return {"encoder": model["encoder"], "decoder_channels": list(model["decoder_channels"]),
            "input_mean": list(model["input_mean"]), "input_std": list(model["input_std"])}


def execute_source(run: Run, ctx: RunContext) -> dict[str, float]:
    """Train one source task and save what it hands on to ``<run_dir>/parts.pt``."""
    import lightning as L

    from modules.pretext import build_source_module, export_parts

    cfg = dict(run.config)
    task = cfg["task"]
    options = dict(cfg.get("task_options") or {})
    # a task may override the shared training settings (e.g. more epochs for the encoder-only classifier)
    src = {**cfg["source"], **{k: options.pop(k) for k in TASK_TRAINING_KEYS if k in options}}
    seed = int(src["seed"])
    L.seed_everything(seed, workers=True, verbose=False)
    dm = make_datamodule(cfg, "source", n_train=src["n_train"], n_val=src["n_val"], n_test=0, label_fraction=1.0,
                         seed=seed, batch_size=src["batch_size"])
    dm.prepare_data()
    dm.setup("fit")
    common = {**_module_common(cfg), "lr": src["lr"]}
    if task == "classification":
        module = build_source_module(task, num_classes=_source_classes(dm), **common)
    elif task == "segmentation":
        module = build_source_module(task, classes=_mask_classes(dm), **common)
    elif task == "contrastive":
        module = build_source_module(task, seed=seed, **common, **options)
    else:
        module = build_source_module(task, **common)
    threads = set_threads(cfg.get("threads"))
    trainer = _trainer(ctx, cfg, src["epochs"], every=1)  # source epochs are long: checkpoint each one
    start = time.time()
    trainer.fit(module, datamodule=dm, ckpt_path=ctx.resume_path())
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "val/"))}
    parts_file = ctx.run_dir / "parts.pt"
    if global_rank() == 0:
        export_parts(module, parts_file, {"task": task, "encoder": cfg["model"]["encoder"],
                                          "decoder_channels": list(cfg["model"]["decoder_channels"]),
                                          "run_key": run.key})
    metrics["train_seconds"] = time.time() - start
    metrics["threads"] = float(threads)
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
    from similarity.cka import linear_cka

    return {name: float(linear_cka(before[name], after[name])) for name in before}


def epochs_to_fraction(curve: Sequence[float], fraction: float = 0.95) -> int | None:
    """First epoch (1-based) whose value reaches ``fraction`` x the final value (None for an empty curve)."""
    values = [v for v in curve if v is not None and not math.isnan(v)]
    if not values:
        return None
    goal = fraction * values[-1]
    for epoch, value in enumerate(values, 1):
        if value >= goal:
            return epoch
    return len(values)


def execute_target(run: Run, ctx: RunContext) -> dict[str, float]:
    """Fine-tune one variant on the target domain; record curves, test Dice/IoU and encoder-stage CKA."""
    import lightning as L

    from callbacks.snapshot import capture_representations
    from modules.segmentation import SegmentationModule

    cfg = dict(run.config)
    p = {**run.params, **cfg["init"]}
    tgt = cfg["target"]
    seed = int(p["seed"])
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
        freeze=p["freeze"], lr=tgt["lr"], allow_download=bool(cfg["imagenet"]["allow_download"]))
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
    threads = set_threads(cfg.get("threads"))
    trainer = _trainer(ctx, cfg, tgt["epochs"], num_sanity_val_steps=0)
    start = time.time()
    trainer.fit(module, datamodule=dm, ckpt_path=ctx.resume_path())
    train_seconds = time.time() - start
    test = trainer.test(module, datamodule=dm, verbose=False)[0]
    after = capture_representations(module, layers, probe, pooling="flatten")
    cka = encoder_stage_cka(before, after)
    history = list(module.history)
    curve = [row.get("val/dice") for row in history]
    stage_cka = {f"cka/stage{i}": v for i, v in enumerate(cka.values(), 1)}
    _log_cka(ctx, list(cka.values()))
    if global_rank() == 0:
        atomic_write_text(ctx.run_dir / "curves.json", json.dumps({"history": history, "cka": cka}, indent=1))
    metrics = {"test_dice": float(test["test/dice"]), "test_iou": float(test["test/iou"]),
               "final_val_dice": float(curve[-1]) if curve else math.nan,
               "best_val_dice": float(max(curve)) if curve else math.nan,
               "epochs_to_95": float(epochs_to_fraction(curve) or math.nan),
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
    try:
        run = ctx.loggers()[0].experiment
    except Exception:  # noqa: BLE001 - logging is best effort
        return
    if global_rank() != 0 or run is None:
        return
    run.define_metric("cka/stage_index")
    run.define_metric("cka/encoder_before_vs_after", step_metric="cka/stage_index")
    for i, v in enumerate(values, 1):
        run.log({"cka/stage_index": i, "cka/encoder_before_vs_after": v})
    import wandb

    run.log({"cka/table": wandb.Table(columns=["stage", "linear_cka"], data=[[i, v] for i, v in
                                                                                enumerate(values, 1)])})


# ============================================================================================ study
class SegmentationStudy(Study):
    """Stage 1: source tasks (cached); stage 2: fine-tune every variant x label fraction x seed."""

    name = "segmentation"

    def plan(self, cfg: dict) -> list[Run]:
        _validate(cfg)
        sources = {task: _source_run(cfg, task) for task in needed_sources(cfg)}
        runs: list[Run] = list(sources.values())
        target_common = {"model": cfg["model"], "data": cfg["data"], "target": cfg["target"],
                         "imagenet": cfg["imagenet"], "analysis": cfg["analysis"],
                         "limit_batches": cfg.get("limit_batches"), "checkpoint_every": cfg.get("checkpoint_every"),
                         "threads": cfg.get("threads")}
        for fraction in _check_fractions(cfg["target"]["label_fractions"]):
            for seed in cfg["seeds"]:
                for v in variants(cfg):
                    source = sources.get(v["encoder"])
                    needs = (source.key,) if source is not None else ()
                    config = {**target_common, "source_key": source.key if source else None,
                              "init": {k: v[k] for k in ("encoder", "decoder", "freeze")}}
                    params = {"variant": v["variant"], "fraction": fraction, "seed": int(seed)}
                    runs.append(Run("segmentation", "target", params, config, needs))
        return runs

    def execute(self, run: Run, ctx: RunContext) -> dict[str, float]:
        import torch

        threads = torch.get_num_threads()
        try:
            if run.stage == "source":
                return execute_source(run, ctx)
            return execute_target(run, ctx)
        finally:
            torch.set_num_threads(threads)  # ``threads: auto`` may have lowered it for this run only

    def report(self, cfg: dict, store: RunStore) -> Path:
        return write_report(cfg, store, planned_keys(cfg))

    def summary_lines(self, cfg: dict, store: RunStore) -> list[str]:
        rows = summary_rows(finished(store, "target", planned_keys(cfg)))
        lines = _terminal_table(["variant", "frac", "test Dice mean ± std [95% CI]", "IoU", "ep→95%", "n"],
                                [(r["variant"], r["fraction"], r["dice_text"], f"{r['iou'].mean:.3f}",
                                  f"{r['epochs'].mean:.1f}", r["dice"].n) for r in rows])
        findings = compute_findings(cfg, finished(store, "target", planned_keys(cfg)))
        lines += ["", "findings:"] + [f"  [{f.verdict}] {f.claim} — {f.effect}" for f in findings]
        return lines


def planned_keys(cfg: dict) -> set[str]:
    return {run.key for run in SegmentationStudy().plan(cfg)}


def finished(store: RunStore, stage: str, keys: set[str] | None = None) -> list[dict]:
    """Finished runs of a stage, restricted to ``keys`` (the current plan: runs of older configs stay out)."""
    runs = store.finished_runs(stage)
    return runs if keys is None else [r for r in runs if r["key"] in keys]


def _validate(cfg: dict) -> None:
    for key in ("seeds", "model", "data", "source", "target", "grid", "imagenet", "analysis"):
        if key not in cfg:
            raise UserError(f'the segmentation profile has no "{key}" section',
                            "start from benchmarks/configs/segmentation/tiny.yaml")
    if len(cfg["target"]["label_fractions"]) < 1:
        raise UserError("target.label_fractions is empty", "give at least one fraction, e.g. [0.25, 1.0]")
    steps = cfg["target"].get("min_steps_per_epoch", 0)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise UserError(f"target.min_steps_per_epoch={steps!r} must be a whole number >= 0",
                        "use 0 for one pass over the labelled images per epoch, or e.g. 4 to repeat small subsets")


# ============================================================================================ analysis
def _group(runs: list[dict]) -> dict[tuple[str, float], list[dict]]:
    groups: dict[tuple[str, float], list[dict]] = defaultdict(list)
    for r in runs:
        groups[(r["params"]["variant"], float(r["params"]["fraction"]))].append(r)
    return groups


def _variant_order(name: str) -> tuple[int, str]:
    encoder = name.split("/")[0]
    rank = ENCODER_SOURCES.index(encoder) if encoder in ENCODER_SOURCES else len(ENCODER_SOURCES)
    return (rank + (10 if "frozen" in name else 0), name)


def summary_rows(runs: list[dict]) -> list[dict]:
    """One row per (variant, fraction): test Dice/IoU and epochs-to-95% estimates over seeds."""
    rows = []
    for (variant, fraction), group in sorted(_group(runs).items(), key=lambda kv: (kv[0][1],
                                                                                    _variant_order(kv[0][0]))):
        dice = mean_ci([r["metrics"]["test_dice"] for r in group])
        rows.append({"variant": variant, "fraction": fraction, "dice": dice,
                     "iou": mean_ci([r["metrics"]["test_iou"] for r in group]),
                     "epochs": mean_ci([r["metrics"].get("epochs_to_95", math.nan) for r in group]),
                     "final_val": mean_ci([r["metrics"].get("final_val_dice", math.nan) for r in group]),
                     "dice_text": f"{dice.mean:.3f} ± {dice.std:.3f} [{dice.low:.3f}, {dice.high:.3f}]"
                     if dice.n > 1 else f"{dice.mean:.3f}"})
    return rows


def _by_seed(runs: list[dict], variant: str, fraction: float, metric: str = "test_dice") -> dict[int, float]:
    return {int(r["params"]["seed"]): float(r["metrics"][metric]) for r in runs
            if r["params"]["variant"] == variant and float(r["params"]["fraction"]) == fraction
            and metric in r["metrics"]}


def paired(runs: list[dict], a: str, b: str, fraction: float, metric: str = "test_dice"
           ) -> tuple[Estimate, list[int]]:
    """CI of mean(a - b) over the seeds both variants finished (paired by seed)."""
    xa, xb = _by_seed(runs, a, fraction, metric), _by_seed(runs, b, fraction, metric)
    seeds = sorted(set(xa) & set(xb))
    return paired_difference([xa[s] for s in seeds], [xb[s] for s in seeds]), seeds


def _pooled(runs: list[dict], pairs: list[tuple[str, str, float]], metric: str = "test_dice") -> Estimate:
    diffs = []
    for a, b, fraction in pairs:
        xa, xb = _by_seed(runs, a, fraction, metric), _by_seed(runs, b, fraction, metric)
        diffs += [xa[s] - xb[s] for s in sorted(set(xa) & set(xb))]
    return mean_ci(diffs)


def _mean_of(runs: list[dict], names: Sequence[str], fraction: float) -> dict[int, float]:
    """Per seed, the mean test Dice of several variants (seeds where all finished)."""
    per = [_by_seed(runs, n, fraction) for n in names]
    seeds = set.intersection(*(set(p) for p in per)) if per else set()
    return {s: sum(p[s] for p in per) / len(per) for s in sorted(seeds)}


def _diff(a: dict[int, float], b: dict[int, float]) -> Estimate:
    seeds = sorted(set(a) & set(b))
    return paired_difference([a[s] for s in seeds], [b[s] for s in seeds])


def _negate(e: Estimate) -> Estimate:
    return Estimate(-e.mean, e.std, -e.high, -e.low, e.n)


def _ci_text(e: Estimate) -> str:
    if e.n < 2:
        return f"{e.mean:+.3f} (n={e.n})"
    return f"{e.mean:+.3f} [{e.low:+.3f}, {e.high:+.3f}]"


def compute_findings(cfg: dict, runs: list[dict]) -> list[Finding]:
    """Verdicts for study 1's findings, from the finished target runs (never written in)."""
    margin = float(cfg.get("findings", {}).get("margin", 0.02))
    fractions = sorted({float(r["params"]["fraction"]) for r in runs})
    present = {r["params"]["variant"] for r in runs}
    findings: list[Finding] = []
    if not fractions:
        return findings
    low, high = fractions[0], fractions[-1]

    # (a) transferred decoder does not raise final Dice over a random decoder (within +margin)
    pairs = [(variant_name(s, "transferred"), variant_name(s, "random"), f) for s in DECODER_SOURCES
             for f in fractions if variant_name(s, "transferred") in present]
    dice = _pooled(runs, pairs)
    speed = _pooled(runs, pairs, "epochs_to_95")
    per_source = "; ".join(
        f"{s}: {_ci_text(_pooled(runs, [p for p in pairs if p[0].startswith(s + '/')]))}"
        for s in DECODER_SOURCES if variant_name(s, "transferred") in present)
    findings.append(Finding(
        claim="(a) a transferred decoder does not raise final Dice over a random decoder",
        verdict=verdict_greater(_negate(dice), -margin),
        effect=f"Dice transferred − random {_ci_text(dice)} (margin +{margin})",
        n=f"{dice.n} pairs", detail=f"per source {per_source}; epochs to 95% transferred − random "
                                    f"{_ci_text(speed)} (negative = converges faster)"))

    # (b) segmentation/reconstruction encoders beat classification encoders, most at low label fractions
    strong = [variant_name(s, "random") for s in ("segmentation", "reconstruction")]
    weak = variant_name("classification", "random")
    if all(v in present for v in strong + [weak]):
        gap_low = _diff(_mean_of(runs, strong, low), _by_seed(runs, weak, low))
        gap_high = _diff(_mean_of(runs, strong, high), _by_seed(runs, weak, high))
        findings.append(Finding(
            claim=f"(b) segmentation/reconstruction encoders beat classification encoders (fraction {low:g})",
            verdict=verdict_greater(gap_low),
            effect=f"Dice mean(seg, recon) − classification {_ci_text(gap_low)}", n=f"{gap_low.n} seeds",
            detail=f"at fraction {high:g}: {_ci_text(gap_high)}; decoders random in both arms"))
        if high != low:
            lows = _diff(_mean_of(runs, strong, low), _by_seed(runs, weak, low))
            seeds = sorted(set(_mean_of(runs, strong, low)) & set(_mean_of(runs, strong, high))
                           & set(_by_seed(runs, weak, low)) & set(_by_seed(runs, weak, high)))
            s_low, s_high = _mean_of(runs, strong, low), _mean_of(runs, strong, high)
            w_low, w_high = _by_seed(runs, weak, low), _by_seed(runs, weak, high)
            dd = mean_ci([(s_low[s] - w_low[s]) - (s_high[s] - w_high[s]) for s in seeds])
            findings.append(Finding(
                claim=f"(b') that advantage is larger at the low label fraction ({low:g} vs {high:g})",
                verdict=verdict_greater(dd), effect=f"gap at {low:g} − gap at {high:g} {_ci_text(dd)}",
                n=f"{dd.n} seeds", detail=f"gap at {low:g}: {_ci_text(lows)}"))

    # (c) contrastive+reconstruction encoder competitive without labels: not worse than the best
    # label-trained source encoder by more than the margin
    ssl = variant_name("contrastive", "random")
    labelled = [variant_name(s, "random") for s in ("classification", "segmentation")
                if variant_name(s, "random") in present]
    if ssl in present and labelled:
        best = max(labelled, key=lambda v: mean_ci(list(_by_seed(runs, v, low).values())).mean)
        effect = _diff(_by_seed(runs, ssl, low), _by_seed(runs, best, low))
        vs_random = _diff(_by_seed(runs, ssl, low), _by_seed(runs, variant_name("random", "random"), low)) \
            if variant_name("random", "random") in present else None
        findings.append(Finding(
            claim=f"(c) the contrastive+reconstruction encoder (no labels) is competitive (fraction {low:g})",
            verdict=verdict_greater(effect, -margin),
            effect=f"Dice contrastive − best labelled source ({best.split('/')[0]}) {_ci_text(effect)} "
                   f"(margin −{margin})", n=f"{effect.n} seeds",
            detail=f"contrastive − random encoder {_ci_text(vs_random)}" if vs_random else ""))
    return findings


# ============================================================================================ report
def _curves(run: dict) -> dict:
    path = Path(run["dir"]) / "curves.json"
    return json.loads(path.read_text()) if path.exists() else {"history": [], "cka": {}}


def _plot_learning_curves(runs: list[dict], fractions: list[float], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(fractions), figsize=(6 * len(fractions), 4.2), squeeze=False)
    groups = _group(runs)
    names = sorted({v for v, _ in groups}, key=_variant_order)
    colours = plt.get_cmap("tab10")
    for ax, fraction in zip(axes[0], fractions):
        for i, name in enumerate(names):
            curves = [[row.get("val/dice", np.nan) for row in _curves(r)["history"]]
                      for r in groups.get((name, fraction), [])]
            curves = [c for c in curves if c]
            if not curves:
                continue
            length = min(len(c) for c in curves)
            arr = np.array([c[:length] for c in curves], dtype=float)
            mean, std = np.nanmean(arr, 0), np.nanstd(arr, 0)
            epochs = np.arange(1, length + 1)
            style = "--" if "transferred" in name else (":" if "frozen" in name else "-")
            ax.plot(epochs, mean, style, color=colours(i % 10), label=name)
            ax.fill_between(epochs, mean - std, mean + std, color=colours(i % 10), alpha=0.15)
        ax.set_title(f"label fraction {fraction:g}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation Dice")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    return save_figure(fig, path)


def _plot_final_bars(rows: list[dict], fractions: list[float], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({r["variant"] for r in rows}, key=_variant_order)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names) * len(fractions)), 4.2))
    width = 0.8 / max(len(fractions), 1)
    for j, fraction in enumerate(fractions):
        sub = {r["variant"]: r for r in rows if r["fraction"] == fraction}
        xs, ys, errs = [], [], []
        for i, name in enumerate(names):
            if name in sub:
                d = sub[name]["dice"]
                xs.append(i + j * width)
                ys.append(d.mean)
                errs.append(0 if d.n < 2 else (d.high - d.low) / 2)
        ax.bar(xs, ys, width, yerr=errs, capsize=3, label=f"fraction {fraction:g}")
    ax.set_xticks([i + width * (len(fractions) - 1) / 2 for i in range(len(names))])
    ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("test Dice (mean, 95% CI)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def _cka_rows(runs: list[dict]) -> tuple[list[str], list[list[object]], dict[str, list[float]]]:
    per_variant: dict[str, list[list[float]]] = defaultdict(list)
    for r in runs:
        values = [v for k, v in sorted(r["metrics"].items()) if k.startswith("cka/stage")]
        if values:
            per_variant[r["params"]["variant"]].append(values)
    names = sorted(per_variant, key=_variant_order)
    if not names:
        return [], [], {}
    stages = min(len(v) for vs in per_variant.values() for v in vs)
    means = {n: [mean_ci([v[i] for v in per_variant[n]]).mean for i in range(stages)] for n in names}
    headers = ["variant"] + [f"stage {i + 1}" for i in range(stages)]
    return headers, [[n] + [round(x, 3) for x in means[n]] for n in names], means


def _plot_cka(means: dict[str, list[float]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, values in means.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", label=name)
    ax.set_xlabel("encoder stage (shallow → deep)")
    ax.set_ylabel("linear CKA before vs after fine-tuning")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def write_report(cfg: dict, store: RunStore, keys: set[str] | None = None) -> Path:
    """report.md + figures/ + summary.csv from the finished runs (of the plan's ``keys`` when given)."""
    root = store.root
    runs = finished(store, "target", keys)
    sources = finished(store, "source", keys)
    fig_dir = root / "figures"
    rows = summary_rows(runs)
    fractions = sorted({r["fraction"] for r in rows})
    write_csv(root / "summary.csv",
              ["variant", "label_fraction", "dice_mean", "dice_std", "dice_low", "dice_high", "iou_mean",
               "iou_std", "epochs_to_95_mean", "n"],
              [(r["variant"], r["fraction"], r["dice"].mean, r["dice"].std, r["dice"].low, r["dice"].high,
                r["iou"].mean, r["iou"].std, r["epochs"].mean, r["dice"].n) for r in rows])
    findings = compute_findings(cfg, runs)
    parts = [header("Segmentation transfer: choose the right encoder, skip the decoder", cfg, runs + sources)]
    parts += ["Protocol: /work/shared/STUDIES.md study 1 (Dippel et al., arXiv 2207.14508). Source tasks "
              "train once on the source scene domain; every variant is then fine-tuned on the target domain "
              "(binary segmentation) at each label fraction and seed. Same seed = same labelled subset and "
              "same fresh parts, so comparisons are paired by seed. Dice/IoU: torchmetrics, background "
              "excluded, per image then averaged over images (`DiceScore(average='macro', "
              "aggregation_level='samplewise')`, `MeanIoU`), on the held-out test images after the last "
              "epoch.", "", "## Findings", "", findings_table(findings) if findings else "No target runs yet.\n"]
    parts += ["## Test Dice and IoU per variant", "",
              table(["variant", "label fraction", "test Dice mean ± std", "95% CI", "IoU mean ± std",
                     "epochs to 95% of final val Dice", "n"],
                    [(r["variant"], r["fraction"], f"{r['dice'].mean:.3f} ± {r['dice'].std:.3f}",
                      _interval(r["dice"]), f"{r['iou'].mean:.3f} ± {r['iou'].std:.3f}",
                      f"{r['epochs'].mean:.1f}", r["dice"].n) for r in rows])]
    if rows:
        parts.append(figure(_plot_final_bars(rows, fractions, fig_dir / "final_dice.png"), root,
                            "Test Dice per variant and label fraction (mean, 95% CI over seeds)"))
        parts.append(figure(_plot_learning_curves(runs, fractions, fig_dir / "learning_curves.png"), root,
                            "Validation Dice per epoch (mean ± std over seeds); dashed = transferred decoder, "
                            "dotted = frozen encoder"))
    parts += ["## Paired comparisons (same seed)", "", _paired_table(runs, fractions)]
    headers, cka_rows, means = _cka_rows(runs)
    if cka_rows:
        parts += ["## How much each encoder changed during fine-tuning", "",
                  "Linear CKA (biased HSIC, similarity.cka.linear_cka) between each encoder stage's output on a "
                  "fixed probe batch of target images before and after fine-tuning (1 = unchanged), mean over "
                  "runs of all fractions and seeds.", "", table(headers, cka_rows),
                  figure(_plot_cka(means, fig_dir / "encoder_cka.png"), root,
                         "Encoder stage similarity before vs after fine-tuning")]
    if sources:
        parts += ["## Source runs", "", table(["task", "metrics", "wall (s)"],
                                              [(s["params"]["task"], _fmt_metrics(s["metrics"]),
                                                round(s["metrics"].get("wall_seconds", 0.0), 1))
                                               for s in sources])]
    path = root / "report.md"
    atomic_write_text(path, "\n".join(parts) + "\n")
    return path


def _interval(e: Estimate) -> str:
    return f"[{e.low:.3f}, {e.high:.3f}]" if e.n > 1 else "n/a (one seed)"


def _fmt_metrics(metrics: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" for k, v in sorted(metrics.items())
                     if k.startswith(("val/", "train/")) and isinstance(v, float))


def _paired_table(runs: list[dict], fractions: list[float]) -> str:
    present = {r["params"]["variant"] for r in runs}
    comparisons = [(variant_name(s, "transferred"), variant_name(s, "random")) for s in DECODER_SOURCES]
    comparisons += [(variant_name(s, "random"), variant_name("classification", "random"))
                    for s in ("segmentation", "reconstruction", "contrastive")]
    comparisons += [(variant_name(s, "random"), variant_name("random", "random"))
                    for s in ("imagenet", "classification", "segmentation", "reconstruction", "contrastive")]
    comparisons += [(variant_name("random", "random", "encoder"), variant_name("random", "random"))]
    rows = []
    for a, b in comparisons:
        if a not in present or b not in present:
            continue
        for f in fractions:
            e, seeds = paired(runs, a, b, f)
            if e.n:
                rows.append((f"{a} − {b}", f, _ci_text(e), e.n))
    return table(["comparison (test Dice)", "label fraction", "difference [95% CI]", "seeds"], rows)
