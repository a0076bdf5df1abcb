"""The MAML study's training: meta-train MAML/ANIL, train the conventional control, analyse both.

Each run keeps its weights at the analysed checkpoints, measures few-shot accuracy on held-out tasks
(``test_accuracies.json``) and writes the representation analysis of every kept checkpoint
(``analysis.json``, see analyse.py). The config arrives validated and typed (protocol.check_config).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from benchmarks.core.errors import UserError
from benchmarks.core.runstore import atomic_write_json
from benchmarks.core.stats import Estimate, mean_ci
from benchmarks.core.study import Run, RunContext, global_rank
from benchmarks.core.training import KeepWeights, epoch_checkpoint, kept_weights
from benchmarks.studies.maml.analyse import (
    aggregate_tasks,
    final_summary,
    inner_loop_rows,
    probe_set,
    training_rows,
)
from benchmarks.studies.maml.plan import analysed_steps
from benchmarks.studies.maml.protocol import LAYERS


# ============================================================================================ pieces
def build_datamodule(config: dict, seed: int):
    """The few-shot DataModule of an experiment (tasks are reproducible functions of the seed)."""
    from datamodules.tasks import FewShotDataModule

    data, meta = config["data"], config["maml"]
    batch = meta["meta_batch_size"]
    try:
        return FewShotDataModule(
            source=data["source"], ways=data["ways"], shots=data["shots"], queries=data["queries"],
            meta_batch_size=batch, num_train_tasks=max(meta["meta_steps"] * batch, batch),
            num_val_tasks=meta["val_tasks"], num_test_tasks=meta["test_tasks"], seed=seed,
            image_size=data["image_size"], glyph_seed=data.get("glyph_seed", 0),
            min_fonts=data.get("min_fonts", 4), instances_per_char=data.get("instances_per_char", 20),
            data_root=config.get("data_root"))
    except ValueError as err:
        raise UserError(f"cannot build the few-shot data of experiment {config['experiment']}: {err}",
                        "fix the data entries (or experiments.<name>.data)") from None


def build_module(config: dict, algorithm: str, inner_lr: float | None = None):
    from modules.maml import MAMLModule

    data, model, meta = config["data"], config["model"], config["maml"]
    return MAMLModule(
        data["ways"], in_channels=model["in_channels"], image_size=data["image_size"], hidden=model["hidden"],
        algorithm=algorithm, first_order=meta["first_order"], inner_steps=meta["inner_steps"],
        inner_steps_test=meta["inner_steps_test"], inner_lr=meta["inner_lr"] if inner_lr is None else inner_lr,
        inner_lr_mode=meta.get("inner_lr_mode", "fixed"), meta_lr=meta["meta_lr"],
        engine=meta.get("engine", "auto"))


def weight_files(run_dir: Path) -> dict[int, Path]:
    """Kept weights of a run by optimiser step."""
    return kept_weights(run_dir / "weights")


class ControlClassDataset(Dataset):
    """(image, label) with the dataset's labels mapped to 0..K-1, for the conventional control."""

    def __init__(self, dataset: Dataset) -> None:
        from datamodules.tasks import dataset_labels

        raw = dataset_labels(dataset)
        classes, labels = np.unique(raw, return_inverse=True)
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.num_classes = len(classes)
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.as_tensor(self.dataset[index][0]), self.labels[index]


def control_adapter(config: dict, state: dict[str, torch.Tensor]):
    """A MAMLModule holding the control's body and a fresh seeded head; its inner loop adapts every layer."""
    module = build_module(config, "maml", inner_lr=config["control"]["inner_lr"])
    own = module.net.state_dict()
    body = {k[len("net."):]: v for k, v in state.items()
            if k.startswith("net.") and not k.startswith("net.head.") and k[len("net."):] in own}
    missing = [k for k in own if not k.startswith("head.") and k not in body]
    if missing:
        raise RuntimeError(f"control weights lack {missing[:3]}: the control and MAML networks differ")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config["control"].get("head_seed", 0))
        module.net.head.reset_parameters()
    module.net.load_state_dict(body, strict=False)
    return module


def control_network(config: dict, classes: int, state: dict[str, torch.Tensor]):
    """The control classifier itself (its own head over ``classes``) as a MAMLModule, for reading its layers with
    the same transductive batch norm as MAML's (batch statistics of the probe set)."""
    module = build_module({**config, "data": {**config["data"], "ways": classes}}, "maml")
    own = module.net.state_dict()
    weights = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.") and k[len("net."):] in own}
    missing = [k for k in own if k not in weights]
    if missing:
        raise RuntimeError(f"control weights lack {missing[:3]}: the control and MAML networks differ")
    module.net.load_state_dict(weights)
    return module


def run_device(ctx: RunContext) -> torch.device:
    """Where evaluation and analysis run: the run's accelerator when it is a GPU, else the CPU."""
    if ctx.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def evaluate_accuracies(module, loader: Iterable) -> list[float]:
    """Per-task query accuracy after the module's test-time inner loop, for every task of ``loader``."""
    accuracies: list[float] = []
    for batch in loader:
        batch = [t.to(module.device) for t in batch]
        accuracies += module.evaluate_tasks(batch)[1].cpu().tolist()
    return accuracies


def log_test_accuracy(trainer, run_dir: Path, est: Estimate) -> None:
    """The run's own meta-test accuracy (mean and 95% CI over its held-out tasks) to W&B and the run dir."""
    from callbacks.run_outputs import RunOutputs

    values = {"test/acc": est.mean, "test/acc_ci95": (est.high - est.low) / 2, "test/tasks": est.n}
    outputs = RunOutputs(trainer, run_dir)
    outputs.log(values)
    outputs.summary(values)


def log_analysis(trainer, run_dir: Path, analysis: dict, record: Sequence[int], measures: Sequence[str],
                 model: str) -> None:
    """Curves against their own axes (inner step, meta step), tables and figures to W&B and the run dir."""
    from callbacks.plots import curves_figure
    from callbacks.run_outputs import RunOutputs

    outputs = RunOutputs(trainer, run_dir)
    last = max(record)
    within = aggregate_tasks(analysis["within"], ("checkpoint", "layer", "inner_step", "measure"))
    if within:
        final = max(r["checkpoint"] for r in within)
        outputs.define_curve("inner", "inner_step")
        for k in record:
            row = {"inner_step": k}
            for r in within:
                if r["checkpoint"] == final and r["inner_step"] == k:
                    row[f"inner/{r['measure']}/{r['layer']}"] = r["mean"]
            if k == 0:
                row.update({f"inner/{m}/{layer}": 0.0 for m in measures for layer in LAYERS})
            outputs.log(row)
    outputs.define_curve("training", "meta_step")
    for step in sorted({r["checkpoint"] for r in analysis["from_init"]}):
        row = {"meta_step": step}
        row.update({f"training/{r['measure']}_inner{last}/{r['layer']}": r["mean"] for r in within
                    if r["checkpoint"] == step and r["inner_step"] == last})
        row.update({f"training/{r['measure']}_from_previous/{r['layer']}": r["value"] for r in analysis["between"]
                    if r["to"] == step})
        row.update({f"training/{r['measure']}_from_start/{r['layer']}": r["value"] for r in analysis["from_init"]
                    if r["checkpoint"] == step})
        outputs.log(row)
    for kind in ("within", "between", "from_init"):
        rows = within if kind == "within" else analysis[kind]
        if rows:
            outputs.table(f"analysis/{kind}", rows)
    if within:
        for measure in measures:
            series = {layer: [0.0] + [r["mean"] for r in within if r["checkpoint"] == final and r["layer"] == layer
                                      and r["measure"] == measure] for layer in LAYERS}
            fig = curves_figure(list(record), series, title=f"{model}: change over the inner loop ({measure})",
                                xlabel="inner step", ylabel=f"{measure} to step 0")
            outputs.figure(f"figures/inner_{measure}.png", fig, wandb_key=f"analysis/inner_{measure}")


def analysis_inputs(dm, analysis: dict) -> tuple[list, torch.Tensor]:
    """The fixed analysed tasks (their support sets drive the inner loop) and the fixed probe set."""
    split = analysis["split"]
    tasks = dm.analysis_tasks(analysis["tasks"], split, queries=1, seed=analysis["seed"])
    try:
        probes = probe_set(dm.class_datasets[split], analysis["probes"], analysis["seed"])
    except ValueError as err:
        problem = f"analysis.probes={analysis['probes']} {str(err).replace('the split', f'the {split} split')}"
        raise UserError(problem, "lower analysis.probes (one probe image per class) or analyse a split with more "
                                 "classes") from None
    return tasks, probes


def _tagged(rows: list[dict], model: str) -> list[dict]:
    return [{**r, "model": model} for r in rows]


# ============================================================================================ runs
def meta_train(run: Run, ctx: RunContext) -> dict[str, float]:
    """Meta-train MAML or ANIL, measure meta-test accuracy, analyse every kept checkpoint."""
    config, seed = run.config, ctx.seed
    meta, analysis = config["maml"], config["analysis"]
    algorithm = config["algorithm"]
    dm = build_datamodule(config, seed)
    dm.setup()
    tasks, probes = analysis_inputs(dm, analysis)  # before training: a bad analysis config fails fast
    module = build_module(config, algorithm)
    total = meta["meta_steps"]
    keep = KeepWeights(ctx.run_dir / "weights", analysed_steps(total, analysis["checkpoints"]))
    checkpoint = epoch_checkpoint(ctx.store.checkpoint_dir(ctx.run.key))
    trainer = ctx.trainer(max_epochs=-1, max_steps=total, callbacks=[keep, checkpoint], checkpoint=False,
                          limit_train_batches=meta["steps_per_epoch"], check_val_every_n_epoch=meta["val_every_epochs"],
                          num_sanity_val_steps=0,
                          use_distributed_sampler=False)  # every rank sees the meta-batch and keeps its share
    trainer.fit(module, datamodule=dm, ckpt_path=ctx.resume_path())
    fit_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "val/"))}
    if global_rank() != 0:
        return {}
    device = run_device(ctx)
    accuracies = evaluate_accuracies(module.to(device), dm.test_dataloader())
    atomic_write_json(ctx.run_dir / "test_accuracies.json", {"model": algorithm, "accuracies": accuracies})
    est = mean_ci(accuracies)
    log_test_accuracy(trainer, ctx.run_dir, est)

    def load(path: Path):
        reloaded = build_module(config, algorithm)
        reloaded.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return reloaded.to(device)

    record = analysis["record_steps"]
    files = weight_files(ctx.run_dir)
    # ANIL's body cannot move in its inner loop and no finding reads its curve: its inner loop is read at the end only
    inner_files = files if algorithm == "maml" else {max(files): files[max(files)]}
    within = inner_loop_rows(load, inner_files, tasks, probes, record, analysis["measures"])
    result = {"within": _tagged(within, algorithm),
              **{k: _tagged(v, algorithm) for k, v in training_rows(load, files, probes, analysis["measures"]).items()}}
    atomic_write_json(ctx.run_dir / "analysis.json", result)
    log_analysis(trainer, ctx.run_dir, result, record, analysis["measures"], algorithm)
    metrics = {"test_acc": est.mean, "test_acc_ci95": (est.high - est.low) / 2, "test_tasks": est.n,
               "meta_steps": trainer.global_step, **fit_metrics}
    metrics.update(final_summary(within, max(record)))
    return metrics


def control(run: Run, ctx: RunContext) -> dict[str, float]:
    """Train the conventional classifier and analyse its kept checkpoints twice: as the paper's control (each layer
    vs its start and vs the checkpoint before, its own head, no inner loop) and as the fine-tuned control (a fresh
    head, MAML's inner loop on every layer)."""
    from torch.utils.data import DataLoader, Subset

    from datamodules.samplers import EpochSeededRandomSampler
    from modules.classification import ClassificationModule

    config, seed = run.config, ctx.seed
    settings, analysis, model = config["control"], config["analysis"], config["model"]
    dm = build_datamodule(config, seed)
    dm.setup()
    tasks, probes = analysis_inputs(dm, analysis)  # before training: a bad analysis config fails fast
    train = ControlClassDataset(dm.class_datasets["train"])
    classifier = ClassificationModule("conv4", train.num_classes, in_channels=model["in_channels"],
                                      image_size=config["data"]["image_size"], hidden=model["hidden"],
                                      lr=settings["lr"], optimizer="adam")
    loader = DataLoader(train, batch_size=settings["batch_size"], drop_last=True,
                        sampler=EpochSeededRandomSampler(len(train), seed))
    limit = settings.get("limit_batches")
    per_epoch = len(loader) if limit is None else min(len(loader), limit)
    if per_epoch == 0:
        raise UserError(f"control.batch_size={settings['batch_size']} is larger than the control's {len(train)} "
                        "training images (no full batch)", "lower control.batch_size")
    total = settings["epochs"] * per_epoch
    keep = KeepWeights(ctx.run_dir / "weights", analysed_steps(total, analysis["checkpoints"]))
    trainer = ctx.trainer(max_epochs=settings["epochs"], callbacks=[keep], limit_train_batches=per_epoch,
                          limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(classifier, train_dataloaders=loader, ckpt_path=ctx.resume_path())
    if global_rank() != 0:
        return {}
    train_loss = float(trainer.callback_metrics.get("train/loss_epoch", math.nan))
    device = run_device(ctx)

    def load_adapter(path: Path):
        return control_adapter(config, torch.load(path, map_location="cpu", weights_only=True)).to(device)

    def load_own(path: Path):
        return control_network(config, train.num_classes,
                               torch.load(path, map_location="cpu", weights_only=True)).to(device)

    record = analysis["record_steps"]
    files = weight_files(ctx.run_dir)
    final = max(files)  # the fine-tuned control is a second control, read at the end of training only
    within = inner_loop_rows(load_adapter, {final: files[final]}, tasks, probes, record, analysis["measures"])
    result = {"within": _tagged(within, "finetuned_control"),
              **{k: _tagged(v, "control") for k, v in training_rows(load_own, files, probes,
                                                                    analysis["measures"]).items()}}
    atomic_write_json(ctx.run_dir / "analysis.json", result)
    log_analysis(trainer, ctx.run_dir, result, record, analysis["measures"], "control")
    metrics = {"train_loss": train_loss, "classes": train.num_classes, "steps": total}
    n_test = min(settings.get("test_tasks", 0), len(dm.task_datasets["test"]))
    if n_test > 0:  # few-shot accuracy of fine-tuning the whole control network from a fresh head
        adapter = load_adapter(files[final])
        test_tasks = Subset(dm.task_datasets["test"], list(range(n_test)))
        accs = evaluate_accuracies(adapter, DataLoader(test_tasks, batch_size=config["maml"]["meta_batch_size"]))
        atomic_write_json(ctx.run_dir / "test_accuracies.json", {"model": "finetuned_control", "accuracies": accs})
        est = mean_ci(accs)
        log_test_accuracy(trainer, ctx.run_dir, est)
        metrics.update({"test_acc": est.mean, "test_acc_ci95": (est.high - est.low) / 2, "test_tasks": est.n})
    metrics.update(final_summary(within, max(record)))
    return metrics
