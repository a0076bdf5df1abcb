"""Study 3: MAML's representations before and after adaptation (``make bench-maml``).

After Goerttler & Obermayer, "Exploring the similarity of representations in model-agnostic
meta-learning" (arXiv 2105.05757). Protocol (/work/shared/STUDIES.md, study 3), per experiment
(a dataset with its published meta-settings) and seed:

1. ``meta_train`` (algorithm = maml | anil): :class:`modules.maml.MAMLModule` meta-trains a
   transductive-BN conv4 on few-shot tasks of the training classes (learn2learn task sampling via
   datamodules/tasks.py). The meta-parameters are kept at evenly spaced checkpoints (and the init).
   Afterwards: meta-test accuracy with a 95% CI over held-out tasks, then the analysis below.
2. ``control``: the same conv4 trained conventionally (one classifier over every training class),
   weights kept at evenly spaced checkpoints.

Analysis (every kept checkpoint, every model): a fixed list of tasks from the test classes, each
with one probe image per class. Each task's support set drives the inner loop (the control gets a
fresh seeded head and adapts every layer); at inner steps ``record_steps`` the four blocks and the
logits are read on the task's probe images. Dissimilarities per layer and task: RSA (first level
1 - Pearson between examples, second level 1 - Spearman, the paper's choice) and 1 - linear CKA,
between inner step 0 and each recorded step, and between consecutive checkpoints at step 0.

The report gives meta-test accuracy (with published anchors), per-layer dissimilarity tables and
figures, and verdicts for the study's three findings computed from these numbers.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from benchmarks.errors import UserError, did_you_mean, unknown_name
from benchmarks.report import Finding, figure, findings_table, header, save_figure, table, terminal_table, write_csv
from benchmarks.runstore import RunStore, atomic_save_state, atomic_write_json
from benchmarks.stats import Estimate, mean_ci, paired_difference, verdict_greater
from benchmarks.study import Run, RunContext, Study, global_rank

STAGES = ("meta_train", "control")
ALGORITHMS = ("maml", "anil")
MODELS = ("maml", "anil", "control")
MEASURES = ("rsa", "cka")
SOURCES = ("glyphs", "omniglot", "mini_imagenet")
LAYERS = ("block1", "block2", "block3", "block4", "head")
BODY = LAYERS[:-1]
# Published meta-test accuracies (source, ways, shots, algorithm) -> accuracy, for the report.
PUBLISHED = {("omniglot", 5, 1, "maml"): 0.987, ("omniglot", 20, 1, "maml"): 0.958,
             ("mini_imagenet", 5, 1, "maml"): 0.487, ("mini_imagenet", 5, 5, "maml"): 0.631,
             ("mini_imagenet", 5, 1, "anil"): 0.467}


# ============================================================================================ config
def _require(cfg: dict, keys: Iterable[str], where: str) -> None:
    for key in keys:
        if key not in cfg:
            raise UserError(f'the maml config has no "{where}{key}" entry',
                            "start from benchmarks/configs/maml/tiny.yaml (--print-config shows every key)")


def check_config(cfg: dict) -> None:
    """Reject unknown names and impossible settings before anything trains."""
    _require(cfg, ("seeds", "experiments", "data", "model", "maml", "analysis", "control", "findings"), "")
    if not isinstance(cfg["experiments"], dict) or not cfg["experiments"]:
        raise UserError("experiments must map names to overrides of data/model/maml (e.g. {glyphs: {}})",
                        "see benchmarks/configs/maml/paper.yaml for two experiments side by side")
    for name, overrides in cfg["experiments"].items():
        for section in overrides or {}:
            if section not in ("data", "model", "maml"):
                raise unknown_name(f"section in experiments.{name}", section, ("data", "model", "maml"))
        source = experiment_config(cfg, name)["data"]["source"]
        if source not in SOURCES:
            raise unknown_name("few-shot source", source, SOURCES)
    for algorithm in cfg["maml"]["algorithms"]:
        if algorithm not in ALGORITHMS:
            raise unknown_name("algorithm", algorithm, ALGORITHMS)
    analysis = cfg["analysis"]
    for measure in analysis["measures"]:
        if measure not in MEASURES:
            raise unknown_name("similarity measure", measure, MEASURES)
    steps = [int(s) for s in analysis["record_steps"]]
    if 0 not in steps or min(steps) < 0 or len(steps) < 2:
        raise UserError(f"analysis.record_steps={steps} must hold 0 (before adaptation) and at least one later step",
                        "use e.g. [0, 1, 5, 10]")
    if int(analysis["checkpoints"]) < 1 or int(analysis["tasks"]) < 2:
        raise UserError("analysis.checkpoints must be >= 1 and analysis.tasks >= 2",
                        "raise them (the paper: 50 tasks, checkpoints through meta-training)")
    if cfg["findings"]["measure"] not in analysis["measures"]:
        raise UserError(f'findings.measure "{cfg["findings"]["measure"]}" is not among analysis.measures '
                        f"{analysis['measures']}.{did_you_mean(cfg['findings']['measure'], analysis['measures'])}",
                        "pick one of the analysed measures")
    for layer in cfg["findings"]["early_layers"]:
        if layer not in BODY:
            raise unknown_name("layer", layer, BODY)
    meta = cfg["maml"]
    if int(meta["meta_steps"]) < 1 or int(meta["steps_per_epoch"]) < 1:
        raise UserError("maml.meta_steps and maml.steps_per_epoch must be >= 1", "set positive step counts")


def experiment_config(cfg: dict, name: str) -> dict:
    """One experiment's resolved config: the shared data, model and maml sections with its overrides."""
    overrides = cfg["experiments"][name] or {}
    meta = {k: v for k, v in cfg["maml"].items() if k != "algorithms"}
    meta.update(overrides.get("maml", {}))
    data = {**cfg["data"], **overrides.get("data", {})}
    model = {**cfg["model"], **overrides.get("model", {})}
    control = dict(cfg["control"])
    if control.get("inner_lr") is None:
        control["inner_lr"] = meta["inner_lr"]
    out = {"experiment": name, "data": data, "model": model, "maml": meta,
           "analysis": dict(cfg["analysis"]), "control": control}
    if data["source"] != "glyphs":
        out["data_root"] = cfg.get("data_root")
    return out


def analysed_steps(total_steps: int, checkpoints: int) -> list[int]:
    """``checkpoints`` + 1 evenly spaced optimiser steps from 0 (the init) to ``total_steps``."""
    return sorted({round(i * total_steps / checkpoints) for i in range(checkpoints + 1)})


# ============================================================================================ pieces
def build_datamodule(config: dict, seed: int):
    """The few-shot DataModule of an experiment (tasks are reproducible functions of the seed)."""
    from datamodules.tasks import FewShotDataModule

    data, meta = config["data"], config["maml"]
    batch = int(meta["meta_batch_size"])
    try:
        return FewShotDataModule(
            source=data["source"], ways=int(data["ways"]), shots=int(data["shots"]), queries=int(data["queries"]),
            meta_batch_size=batch, num_train_tasks=max(int(meta["meta_steps"]) * batch, batch),
            num_val_tasks=int(meta["val_tasks"]), num_test_tasks=int(meta["test_tasks"]), seed=seed,
            image_size=int(data["image_size"]), glyph_seed=int(data.get("glyph_seed", 0)),
            min_fonts=int(data.get("min_fonts", 4)), instances_per_char=int(data.get("instances_per_char", 20)),
            data_root=config.get("data_root"))
    except ValueError as err:
        raise UserError(f"cannot build the few-shot data of experiment {config['experiment']}: {err}",
                        "fix the data entries (or experiments.<name>.data)") from None


def build_module(config: dict, algorithm: str, inner_lr: float | None = None):
    from modules.maml import MAMLModule

    data, model, meta = config["data"], config["model"], config["maml"]
    return MAMLModule(
        int(data["ways"]), in_channels=int(model["in_channels"]), image_size=int(data["image_size"]),
        hidden=int(model["hidden"]), algorithm=algorithm, first_order=bool(meta["first_order"]),
        inner_steps=int(meta["inner_steps"]), inner_steps_test=int(meta["inner_steps_test"]),
        inner_lr=float(meta["inner_lr"] if inner_lr is None else inner_lr),
        inner_lr_mode=meta.get("inner_lr_mode", "fixed"), meta_lr=float(meta["meta_lr"]),
        engine=meta.get("engine", "auto"))


def save_state(path: Path, state: dict[str, torch.Tensor]) -> None:
    atomic_save_state(path, state)


def weight_files(run_dir: Path) -> dict[int, Path]:
    """Kept weights of a run by optimiser step."""
    return {int(p.stem[4:]): p for p in sorted((run_dir / "weights").glob("step*.pt"))}


def keep_weights_callback(directory: Path, steps: Sequence[int]):
    """Save the module's state at the given optimiser steps (step 0 at fit start); rank 0 writes."""
    from lightning.pytorch import Callback

    wanted = set(int(s) for s in steps)

    class KeepWeights(Callback):
        def _keep(self, trainer, module) -> None:
            step = int(trainer.global_step)
            path = directory / f"step{step:07d}.pt"
            if step in wanted and trainer.is_global_zero and not path.exists():
                save_state(path, module.state_dict())

        def on_fit_start(self, trainer, module) -> None:
            self._keep(trainer, module)

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            self._keep(trainer, module)

    return KeepWeights()


def epoch_checkpoint(ctx: RunContext):
    """``checkpoints/last.ckpt`` after every training epoch, also when validation runs less often
    (Lightning's default then saves only after validation, losing up to that many epochs on a resume)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    return ModelCheckpoint(dirpath=ctx.store.checkpoint_dir(ctx.run.key), filename="last", save_top_k=1,
                           every_n_epochs=1, save_on_train_epoch_end=True, enable_version_counter=False)


class RelabelledDataset(Dataset):
    """(image, label) with the dataset's labels mapped to 0..K-1, for the conventional control."""

    def __init__(self, dataset: Dataset) -> None:
        from datamodules.tasks import dataset_labels

        raw = dataset_labels(dataset)
        classes, self.labels = np.unique(raw, return_inverse=True)
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64)
        self.num_classes = len(classes)
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.as_tensor(self.dataset[index][0]), self.labels[index]


# ============================================================================================ analysis
def dissimilarity(measure: str, x: torch.Tensor, y: torch.Tensor) -> float:
    """0 = same geometry. rsa: 1 - Spearman of correlation-distance RDMs; cka: 1 - linear CKA.

    Degenerate inputs (a constant representation has no RDM) give NaN, which the statistics skip.
    """
    from similarity import SimilarityInputError, linear_cka, rsa_dissimilarity

    try:
        value = (rsa_dissimilarity(x, y, rdm_metric="correlation", compare="spearman") if measure == "rsa"
                 else 1.0 - linear_cka(x, y))
    except (SimilarityInputError, ZeroDivisionError):
        return math.nan
    return value if math.isfinite(value) else math.nan


def task_trajectories(module, tasks: Sequence, record: Sequence[int]) -> list[dict[int, dict[str, torch.Tensor]]]:
    """For each task: layer activations (on CPU) on its probe images at each recorded inner step."""
    device = module.device
    out = []
    for t in tasks:
        acts = module.adaptation_activations(t.support_x.to(device), t.support_y.to(device), t.query_x.to(device),
                                             record)
        out.append({k: {layer: a.cpu() for layer, a in layers.items()} for k, layers in acts.items()})
    return out


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
    from callbacks.run_outputs import RunOutputs

    values = {"test/acc": est.mean, "test/acc_ci95": (est.high - est.low) / 2, "test/tasks": est.n}
    outputs = RunOutputs(trainer, run_dir)
    outputs.log(values)
    outputs.summary(values)


def analyse_checkpoints(model: str, load: Callable[[Path], Any], files: dict[int, Path], tasks: Sequence,
                        record: Sequence[int], measures: Sequence[str]) -> dict[str, list[dict]]:
    """Dissimilarity rows of every kept checkpoint: step 0 vs each recorded step, and consecutive checkpoints."""
    within, between = [], []
    previous: tuple[int, list[dict[str, torch.Tensor]]] | None = None
    for step in sorted(files):
        module = load(files[step])
        trajectories = task_trajectories(module, tasks, record)
        for index, reps in enumerate(trajectories):
            for layer in LAYERS:
                for k in record:
                    if k == 0:
                        continue
                    for measure in measures:
                        within.append({"model": model, "checkpoint": step, "task": index, "layer": layer,
                                       "inner_step": k, "measure": measure,
                                       "value": dissimilarity(measure, reps[0][layer], reps[k][layer])})
                if previous is not None:
                    for measure in measures:
                        between.append({"model": model, "from": previous[0], "to": step, "task": index,
                                        "layer": layer, "measure": measure,
                                        "value": dissimilarity(measure, previous[1][index][layer], reps[0][layer])})
        previous = (step, [reps[0] for reps in trajectories])
    return {"within": within, "between": between}


def aggregate(rows: list[dict], keys: Sequence[str]) -> list[dict]:
    """Mean and 95% CI of ``value`` over tasks for each combination of ``keys``."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for row in rows:
        groups[tuple(row[k] for k in keys)].append(row["value"])
    out = []
    for group, values in sorted(groups.items(), key=lambda kv: tuple(str(v) for v in kv[0])):
        est = mean_ci(values)
        out.append({**dict(zip(keys, group)), "mean": est.mean, "low": est.low, "high": est.high, "n": est.n})
    return out


def log_analysis(trainer, run_dir: Path, analysis: dict, record: Sequence[int], measures: Sequence[str],
                 model: str) -> None:
    """Curves against their own axes (inner step, meta step), tables and figures to W&B and the run dir."""
    from callbacks.plots import curves_figure
    from callbacks.run_outputs import RunOutputs

    outputs = RunOutputs(trainer, run_dir)
    within = aggregate(analysis["within"], ("checkpoint", "layer", "inner_step", "measure"))
    between = aggregate(analysis["between"], ("to", "layer", "measure"))
    final = max(r["checkpoint"] for r in within)
    last = max(record)
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
    for step in sorted({r["checkpoint"] for r in within}):
        row = {"meta_step": step}
        row.update({f"training/{r['measure']}_inner{last}/{r['layer']}": r["mean"] for r in within
                    if r["checkpoint"] == step and r["inner_step"] == last})
        row.update({f"training/{r['measure']}_from_previous/{r['layer']}": r["mean"] for r in between
                    if r["to"] == step})
        outputs.log(row)
    outputs.table("analysis/within", within)
    outputs.table("analysis/between", between)
    for measure in measures:
        series = {layer: [0.0] + [r["mean"] for r in within if r["checkpoint"] == final and r["layer"] == layer
                                  and r["measure"] == measure] for layer in LAYERS}
        fig = curves_figure(list(record), series, title=f"{model}: change over the inner loop ({measure})",
                            xlabel="inner step", ylabel=f"{measure} dissimilarity to step 0")
        outputs.figure(f"figures/inner_{measure}.png", fig, wandb_key=f"analysis/inner_{measure}")


# ============================================================================================ study
class MAMLStudy(Study):
    """Meta-train MAML and ANIL, train a conventional control, compare representations across inner steps."""

    name = "maml"

    # -- plan --------------------------------------------------------------------------------------
    def plan(self, cfg: dict) -> list[Run]:
        check_config(cfg)
        runs = []
        for experiment in cfg["experiments"]:
            config = experiment_config(cfg, experiment)
            for seed in cfg["seeds"]:
                for algorithm in cfg["maml"]["algorithms"]:
                    runs.append(Run(self.name, "meta_train",
                                    {"experiment": experiment, "algorithm": algorithm, "seed": seed},
                                    {**config, "algorithm": algorithm, "seed": seed}))
                runs.append(Run(self.name, "control", {"experiment": experiment, "seed": seed},
                                {**config, "seed": seed}))
        return runs

    # -- execute -----------------------------------------------------------------------------------
    def execute(self, run: Run, ctx: RunContext) -> dict[str, float]:
        import lightning as L

        L.seed_everything(ctx.seed, workers=True, verbose=False)
        if run.stage == "meta_train":
            return self._meta_train(run, ctx)
        return self._control(run, ctx)

    def _meta_train(self, run: Run, ctx: RunContext) -> dict[str, float]:
        from modules.maml import MAMLModule

        config, seed = run.config, ctx.seed
        meta, analysis = config["maml"], config["analysis"]
        dm = build_datamodule(config, seed)
        dm.setup()
        module = build_module(config, run.config["algorithm"])
        total = int(meta["meta_steps"])
        keep = keep_weights_callback(ctx.run_dir / "weights", analysed_steps(total, int(analysis["checkpoints"])))
        trainer = ctx.trainer(max_epochs=-1, max_steps=total, callbacks=[keep, epoch_checkpoint(ctx)], checkpoint=False,
                              limit_train_batches=int(meta["steps_per_epoch"]),
                              check_val_every_n_epoch=int(meta["val_every_epochs"]), num_sanity_val_steps=0,
                              use_distributed_sampler=False)  # every rank sees the meta-batch and keeps its share
        trainer.fit(module, datamodule=dm, ckpt_path=ctx.resume_path())
        fit_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "val/"))}
        if global_rank() != 0:
            return {}
        device = run_device(ctx)
        accuracies = evaluate_accuracies(module.to(device), dm.test_dataloader())
        atomic_write_json(ctx.run_dir / "test_accuracies.json", {"accuracies": accuracies})
        est = mean_ci(accuracies)
        log_test_accuracy(trainer, ctx.run_dir, est)

        def load(path: Path) -> MAMLModule:
            reloaded = build_module(config, run.config["algorithm"])
            reloaded.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return reloaded.to(device)

        tasks = dm.analysis_tasks(int(analysis["tasks"]), analysis["split"], queries=1, seed=int(analysis["seed"]))
        result = analyse_checkpoints(run.config["algorithm"], load, weight_files(ctx.run_dir), tasks,
                                     [int(s) for s in analysis["record_steps"]], analysis["measures"])
        atomic_write_json(ctx.run_dir / "analysis.json", result)
        log_analysis(trainer, ctx.run_dir, result, [int(s) for s in analysis["record_steps"]], analysis["measures"],
                     run.config["algorithm"])
        metrics = {"test_acc": est.mean, "test_acc_ci95": (est.high - est.low) / 2, "test_tasks": est.n,
                   "meta_steps": int(trainer.global_step), **fit_metrics}
        metrics.update(_final_summary(result, max(int(s) for s in analysis["record_steps"])))
        return metrics

    def _control(self, run: Run, ctx: RunContext) -> dict[str, float]:
        from torch.utils.data import DataLoader, Subset

        from datamodules.samplers import EpochSeededRandomSampler
        from modules.classification import ClassificationModule

        config, seed = run.config, ctx.seed
        control, analysis, model = config["control"], config["analysis"], config["model"]
        dm = build_datamodule(config, seed)
        dm.setup()
        train = RelabelledDataset(dm.class_datasets["train"])
        classifier = ClassificationModule("conv4", train.num_classes, in_channels=int(model["in_channels"]),
                                          image_size=int(config["data"]["image_size"]), hidden=int(model["hidden"]),
                                          lr=float(control["lr"]), optimizer="adam")
        loader = DataLoader(train, batch_size=int(control["batch_size"]), drop_last=True,
                            sampler=EpochSeededRandomSampler(len(train), seed))
        per_epoch = len(loader) if control.get("limit_batches") is None else min(len(loader),
                                                                                 int(control["limit_batches"]))
        total = int(control["epochs"]) * per_epoch
        keep = keep_weights_callback(ctx.run_dir / "weights", analysed_steps(total, int(analysis["checkpoints"])))
        trainer = ctx.trainer(max_epochs=int(control["epochs"]), callbacks=[keep], limit_train_batches=per_epoch,
                              limit_val_batches=0, num_sanity_val_steps=0)
        trainer.fit(classifier, train_dataloaders=loader, ckpt_path=ctx.resume_path())
        if global_rank() != 0:
            return {}
        train_loss = float(trainer.callback_metrics.get("train/loss_epoch", math.nan))

        device = run_device(ctx)

        def load(path: Path):
            return control_adapter(config, torch.load(path, map_location="cpu", weights_only=True)).to(device)

        tasks = dm.analysis_tasks(int(analysis["tasks"]), analysis["split"], queries=1, seed=int(analysis["seed"]))
        record = [int(s) for s in analysis["record_steps"]]
        files = weight_files(ctx.run_dir)
        result = analyse_checkpoints("control", load, files, tasks, record, analysis["measures"])
        atomic_write_json(ctx.run_dir / "analysis.json", result)
        log_analysis(trainer, ctx.run_dir, result, record, analysis["measures"], "control")
        metrics = {"train_loss": train_loss, "classes": train.num_classes, "steps": total}
        n_test = min(int(control.get("test_tasks", 0)), len(dm.task_datasets["test"]))
        if n_test > 0:  # few-shot accuracy of fine-tuning the whole control network from a fresh head
            adapter = load(files[max(files)])
            test_tasks = Subset(dm.task_datasets["test"], list(range(n_test)))
            batch_size = int(config["maml"]["meta_batch_size"])
            accs = evaluate_accuracies(adapter, DataLoader(test_tasks, batch_size=batch_size))
            atomic_write_json(ctx.run_dir / "test_accuracies.json", {"accuracies": accs})
            est = mean_ci(accs)
            log_test_accuracy(trainer, ctx.run_dir, est)
            metrics.update({"test_acc": est.mean, "test_acc_ci95": (est.high - est.low) / 2, "test_tasks": est.n})
        metrics.update(_final_summary(result, max(record)))
        return metrics

    # -- report ------------------------------------------------------------------------------------
    def report(self, cfg: dict, store: RunStore) -> Path:
        return write_report(cfg, store)

    def summary_lines(self, cfg: dict, store: RunStore) -> list[str]:
        rows, verdicts = [], []
        for experiment in cfg["experiments"]:
            data = collect(store, experiment)
            for model in MODELS:
                est = accuracy_estimate(data, model)
                if est.n:
                    rows.append((experiment, model, f"{est.mean:.3f} ± {(est.high - est.low) / 2:.3f}", est.n))
            verdicts += [f"  [{f.verdict}] {experiment}: {f.claim}" for f in compute_findings(cfg, data)]
        lines = terminal_table(("experiment", "model", "meta-test acc (95% CI)", "tasks"), rows)
        return lines + ["", "findings:"] + verdicts


def control_adapter(config: dict, state: dict[str, torch.Tensor]):
    """A MAMLModule holding the control's body and a fresh seeded head; its inner loop adapts every layer."""
    module = build_module(config, "maml", inner_lr=float(config["control"]["inner_lr"]))
    own = module.net.state_dict()
    body = {k[len("net."):]: v for k, v in state.items()
            if k.startswith("net.") and not k.startswith("net.head.") and k[len("net."):] in own}
    missing = [k for k in own if not k.startswith("head.") and k not in body]
    if missing:
        raise RuntimeError(f"control weights lack {missing[:3]}: the control and MAML networks differ")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(config["control"].get("head_seed", 0)))
        module.net.head.reset_parameters()
    module.net.load_state_dict(body, strict=False)
    return module


def _final_summary(result: dict, last: int) -> dict[str, float]:
    """Mean dissimilarity per layer between step 0 and the last recorded step, at the final checkpoint."""
    within = result["within"]
    final = max(r["checkpoint"] for r in within)
    rows = aggregate([r for r in within if r["checkpoint"] == final and r["inner_step"] == last],
                     ("measure", "layer"))
    return {f"{r['measure']}.inner{last}.{r['layer']}": r["mean"] for r in rows}


# ============================================================================================ report data
def collect(store: RunStore, experiment: str) -> dict[str, Any]:
    """Finished runs of one experiment: per-task accuracies and analysis rows, tagged with model and seed."""
    data: dict[str, Any] = {"accuracy": defaultdict(dict), "within": [], "between": [], "runs": [], "config": None}
    for run in store.finished_runs():
        if run["params"].get("experiment") != experiment:
            continue
        model = run["params"].get("algorithm", "control")
        seed = run["params"]["seed"]
        data["runs"].append(run)
        data["config"] = data["config"] or run["config"]
        acc_path = run["dir"] / "test_accuracies.json"
        if acc_path.exists():
            for task, value in enumerate(json.loads(acc_path.read_text())["accuracies"]):
                data["accuracy"][model][(seed, task)] = value
        analysis_path = run["dir"] / "analysis.json"
        if analysis_path.exists():
            analysis = json.loads(analysis_path.read_text())
            for kind in ("within", "between"):
                data[kind] += [{**r, "model": model, "seed": seed,
                                "value": math.nan if r["value"] is None else r["value"]} for r in analysis[kind]]
    return data


def accuracy_estimate(data: dict, model: str) -> Estimate:
    return mean_ci(list(data["accuracy"].get(model, {}).values()))


def per_task(rows: list[dict], **where: Any) -> dict[tuple, float]:
    """``value`` by (seed, task) of the rows matching ``where``."""
    return {(r["seed"], r["task"]): r["value"] for r in rows if all(r[k] == v for k, v in where.items())}


def _checkpoints(data: dict, model: str) -> list[int]:
    return sorted({r["checkpoint"] for r in data["within"] if r["model"] == model})


def _paired(a: dict[tuple, float], b: dict[tuple, float]) -> Estimate:
    keys = sorted(set(a) & set(b))
    return paired_difference([a[k] for k in keys], [b[k] for k in keys])


def _mean_over(dicts: list[dict[tuple, float]]) -> dict[tuple, float]:
    keys = set.intersection(*(set(d) for d in dicts)) if dicts else set()
    return {k: float(np.nanmean([d[k] for d in dicts])) for k in keys}


def _fmt(est: Estimate) -> str:
    if est.n == 0:
        return "n/a"
    return f"{est.mean:.3f} [{est.low:.3f}, {est.high:.3f}]"


# ============================================================================================ findings
def compute_findings(cfg: dict, data: dict) -> list[Finding]:
    """The three findings of study 3, each with a verdict computed from the analysis rows."""
    if data["config"] is None:
        return []
    measure = cfg["findings"]["measure"]
    last = max(int(s) for s in data["config"]["analysis"]["record_steps"])
    return [feature_reuse(cfg, data, measure, last), early_rise_from_task(cfg, data, measure, last),
            inner_loop_vs_meta_training(data, measure, last)]


def feature_reuse(cfg: dict, data: dict, measure: str, last: int) -> Finding:
    claim = ("Feature reuse: before and after the inner loop the representations are near-identical "
             "except the head")
    checkpoints = _checkpoints(data, "maml")
    if not checkpoints:
        return Finding(claim, "inconclusive", "no finished MAML run", "0")
    final = checkpoints[-1]
    rows = [r for r in data["within"] if r["model"] == "maml" and r["checkpoint"] == final
            and r["inner_step"] == last and r["measure"] == measure]
    by_layer = {layer: per_task(rows, layer=layer) for layer in LAYERS}
    body_max = {k: max(by_layer[layer][k] for layer in BODY) for k in by_layer["head"]
                if all(k in by_layer[layer] for layer in BODY)}
    gap = _paired(by_layer["head"], body_max)
    body = {layer: mean_ci(list(by_layer[layer].values())) for layer in BODY}
    threshold = float(cfg["findings"]["near_identical"])
    gap_verdict = verdict_greater(gap)
    if gap_verdict == "holds" and all(e.high < threshold for e in body.values()):
        verdict = "holds"
    elif gap_verdict == "does not hold" or any(e.low > threshold for e in body.values()):
        verdict = "does not hold"
    else:
        verdict = "inconclusive"
    detail = (f"{measure} dissimilarity step 0 vs {last} at the final checkpoint: "
              + ", ".join(f"{layer} {_fmt(e)}" for layer, e in body.items())
              + f", head {_fmt(mean_ci(list(by_layer['head'].values())))}; near-identical = below {threshold}")
    return Finding(claim, verdict, f"head − most-changed body layer: {_fmt(gap)}", str(gap.n), detail)


def _early_change(data: dict, model: str, measure: str, last: int, layers: Sequence[str]) -> tuple[Estimate, str]:
    """Fall of the early layers' inner-loop dissimilarity from the first to the last checkpoint (> 0 = rise
    of similarity), per task."""
    checkpoints = _checkpoints(data, model)
    if len(checkpoints) < 2:
        return Estimate(math.nan, math.nan, math.nan, math.nan, 0), "no analysed training"
    rows = [r for r in data["within"] if r["model"] == model and r["inner_step"] == last and r["measure"] == measure]
    first = _mean_over([per_task(rows, checkpoint=checkpoints[0], layer=layer) for layer in layers])
    final = _mean_over([per_task(rows, checkpoint=checkpoints[-1], layer=layer) for layer in layers])
    est = _paired(first, final)
    return est, f"{model}: {_fmt(mean_ci(list(first.values())))} at step {checkpoints[0]} -> " \
                f"{_fmt(mean_ci(list(final.values())))} at step {checkpoints[-1]}"


def early_rise_from_task(cfg: dict, data: dict, measure: str, last: int) -> Finding:
    layers = list(cfg["findings"]["early_layers"])
    claim = (f"The similarity rise (before vs after the inner loop) in layers near the input ({', '.join(layers)}) "
             "comes from the task: the conventionally trained control shows it too")
    maml, maml_text = _early_change(data, "maml", measure, last, layers)
    control, control_text = _early_change(data, "control", measure, last, layers)
    if verdict_greater(maml) != "holds":
        verdict = "inconclusive"
        maml_text += " (MAML itself shows no rise to explain)"
    else:
        verdict = verdict_greater(control)
    return Finding(claim, verdict, f"control's fall of {measure} dissimilarity: {_fmt(control)}; "
                   f"MAML's: {_fmt(maml)}", str(control.n), f"{maml_text}; {control_text}")


def inner_loop_vs_meta_training(data: dict, measure: str, last: int) -> Finding:
    claim = "Inner-loop steps change the representations more than meta-training does between checkpoints"
    checkpoints = _checkpoints(data, "maml")
    if len(checkpoints) < 2:
        return Finding(claim, "inconclusive", "needs at least two analysed checkpoints", "0")
    within = [r for r in data["within"] if r["model"] == "maml" and r["inner_step"] == last
              and r["measure"] == measure]
    between = [r for r in data["between"] if r["model"] == "maml" and r["measure"] == measure]
    differences, per_layer = [], {}
    for layer in LAYERS:
        inner = _mean_over([per_task(within, checkpoint=c, layer=layer) for c in checkpoints[1:]])
        meta = _mean_over([per_task(between, to=c, layer=layer) for c in checkpoints[1:]])
        per_layer[layer] = _paired(inner, meta)
        differences.append({k: inner[k] - meta[k] for k in set(inner) & set(meta)})
    overall = _mean_over(differences)
    est = mean_ci(list(overall.values()))
    detail = ("inner loop (step 0 vs " + str(last) + ") minus change between consecutive checkpoints, per layer: "
              + ", ".join(f"{layer} {_fmt(e)}" for layer, e in per_layer.items()))
    return Finding(claim, verdict_greater(est), f"mean over layers: {_fmt(est)}", str(est.n), detail)


# ============================================================================================ report
def write_report(cfg: dict, store: RunStore) -> Path:
    """``report.md``, ``summary.csv`` and figures from the finished runs."""
    root = store.root
    figures = root / "figures"
    runs = store.finished_runs()
    parts = [header("Study 3: similarity of representations in MAML", cfg, runs),
             "After Goerttler & Obermayer (arXiv 2105.05757). Dissimilarities: **rsa** = 1 − Spearman "
             "correlation of the RDMs (first level 1 − Pearson between probe images), **cka** = 1 − linear CKA; "
             "0 means the same representational geometry. Verdicts are computed from the numbers below "
             "(95% CIs over analysed tasks × seeds).", ""]
    summary_rows = []
    for experiment in cfg["experiments"]:
        data = collect(store, experiment)
        if data["config"] is None:
            parts.append(f"## {experiment}\n\nNo finished runs yet.\n")
            continue
        parts += _experiment_section(cfg, experiment, data, root, figures)
        summary_rows += _summary_rows(experiment, data)
    write_csv(root / "summary.csv", ["experiment", "model", "kind", "checkpoint", "layer", "inner_step", "measure",
                                     "mean", "low", "high", "n"],
              [[r.get(k) for k in ("experiment", "model", "kind", "checkpoint", "layer", "inner_step", "measure",
                                   "mean", "low", "high", "n")] for r in summary_rows])
    path = root / "report.md"
    from benchmarks.runstore import atomic_write_text

    atomic_write_text(path, "\n".join(parts) + "\n")
    return path


def _summary_rows(experiment: str, data: dict) -> list[dict]:
    rows = [{"experiment": experiment, "kind": "within", **r}
            for r in aggregate(data["within"], ("model", "checkpoint", "layer", "inner_step", "measure"))]
    rows += [{"experiment": experiment, "kind": "between", "checkpoint": r["to"], **r}
             for r in aggregate(data["between"], ("model", "to", "layer", "measure"))]
    for model in MODELS:
        est = accuracy_estimate(data, model)
        if est.n:
            rows.append({"experiment": experiment, "model": model, "kind": "test_acc", "mean": est.mean,
                         "low": est.low, "high": est.high, "n": est.n})
    return rows


def _experiment_section(cfg: dict, experiment: str, data: dict, root: Path, figures: Path) -> list[str]:
    config = data["config"]
    d, meta = config["data"], config["maml"]
    record = [int(s) for s in config["analysis"]["record_steps"]]
    last = max(record)
    measures = config["analysis"]["measures"]
    out = [f"## {experiment}: {d['source']} {d['ways']}-way {d['shots']}-shot", "",
           f"{'first' if meta['first_order'] else 'second'}-order meta-gradients, meta-batch "
           f"{meta['meta_batch_size']}, inner lr {meta['inner_lr']} ({meta.get('inner_lr_mode', 'fixed')}), "
           f"{meta['inner_steps']} inner steps in training and {meta['inner_steps_test']} at test, "
           f"{meta['meta_steps']} meta-steps; analysis on {config['analysis']['tasks']} fixed test tasks, one probe "
           f"image per class, inner steps {record}.", "", "### Findings", "",
           findings_table(compute_findings(cfg, data)), "### Meta-test accuracy", ""]
    acc_rows = []
    for model in MODELS:
        est = accuracy_estimate(data, model)
        if est.n == 0:
            continue
        published = PUBLISHED.get((d["source"], int(d["ways"]), int(d["shots"]), model))
        label = {"control": f"control (fine-tuned {meta['inner_steps_test']} steps from a fresh head)"}.get(model,
                                                                                                           model)
        acc_rows.append((label, f"{est.mean:.4f}", f"[{est.low:.4f}, {est.high:.4f}]", est.n,
                         f"{published:.3f}" if published else "-"))
    out += [table(("model", "accuracy", "95% CI", "tasks", "published"), acc_rows),
            f"Chance is {1 / int(d['ways']):.2f}.", ""]
    fig_path = _accuracy_figure(data, figures / f"{experiment}_accuracy.png", experiment)
    if fig_path:
        out.append(figure(fig_path, root, "Meta-test accuracy with 95% CIs"))
    for measure in measures:
        out += [f"### Change over the inner loop ({measure}), final checkpoint", ""]
        header_row = ["model", "inner step"] + list(LAYERS)
        rows = []
        for model in MODELS:
            checkpoints = _checkpoints(data, model)
            if not checkpoints:
                continue
            agg = aggregate([r for r in data["within"] if r["model"] == model and r["checkpoint"] == checkpoints[-1]
                             and r["measure"] == measure], ("inner_step", "layer"))
            for k in record[1:]:
                cells = {r["layer"]: f"{r['mean']:.3f} ± {(r['high'] - r['low']) / 2:.3f}" for r in agg
                         if r["inner_step"] == k}
                rows.append([model, k] + [cells.get(layer, "-") for layer in LAYERS])
        out += [table(header_row, rows)]
        out.append(figure(_inner_figure(data, measure, record, figures / f"{experiment}_inner_{measure}.png"),
                          root, f"{measure} dissimilarity to inner step 0 at the final checkpoint, per layer"))
        out.append(figure(_training_figure(data, measure, last, figures / f"{experiment}_training_{measure}.png"),
                          root, f"{measure} dissimilarity step 0 vs {last} through training (MAML vs control)"))
        out.append(figure(_inner_vs_training_figure(data, measure, last,
                                                    figures / f"{experiment}_inner_vs_training_{measure}.png"),
                          root, f"MAML: inner-loop change vs change between consecutive checkpoints ({measure})"))
    return out


def _accuracy_figure(data: dict, path: Path, experiment: str) -> Path | None:
    from callbacks.plots import new_figure

    models = [m for m in MODELS if accuracy_estimate(data, m).n]
    if not models:
        return None
    fig = new_figure(5, 3.5)
    ax = fig.add_subplot()
    ests = [accuracy_estimate(data, m) for m in models]
    ax.bar(models, [e.mean for e in ests], yerr=[(e.high - e.low) / 2 for e in ests], capsize=4)
    ax.set_ylim(0, 1)
    ax.set_ylabel("meta-test accuracy")
    ax.set_title(experiment)
    return save_figure(fig, path)


def _inner_figure(data: dict, measure: str, record: Sequence[int], path: Path) -> Path:
    from callbacks.plots import new_figure

    fig = new_figure(4.2 * len(MODELS), 3.6)
    for index, model in enumerate(MODELS, 1):
        ax = fig.add_subplot(1, len(MODELS), index)
        checkpoints = _checkpoints(data, model)
        if checkpoints:
            agg = aggregate([r for r in data["within"] if r["model"] == model and r["checkpoint"] == checkpoints[-1]
                             and r["measure"] == measure], ("layer", "inner_step"))
            for layer in LAYERS:
                points = [(0, 0.0, 0.0, 0.0)] + [(r["inner_step"], r["mean"], r["low"], r["high"]) for r in agg
                                                 if r["layer"] == layer]
                xs, ys, lo, hi = zip(*sorted(points))
                ax.plot(xs, ys, marker="o", markersize=3, label=layer)
                ax.fill_between(xs, lo, hi, alpha=0.15)
        ax.set_title(model)
        ax.set_xlabel("inner step")
        ax.set_ylabel(f"{measure} dissimilarity to step 0")
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=8)
    return save_figure(fig, path)


def _training_figure(data: dict, measure: str, last: int, path: Path) -> Path:
    from callbacks.plots import new_figure

    models = [m for m in ("maml", "control") if _checkpoints(data, m)] or ["maml"]
    fig = new_figure(4.5 * len(models), 3.6)
    for index, model in enumerate(models, 1):
        ax = fig.add_subplot(1, len(models), index)
        agg = aggregate([r for r in data["within"] if r["model"] == model and r["inner_step"] == last
                         and r["measure"] == measure], ("layer", "checkpoint"))
        checkpoints = _checkpoints(data, model)
        span = max(checkpoints[-1], 1) if checkpoints else 1
        for layer in LAYERS:
            points = sorted((r["checkpoint"] / span, r["mean"]) for r in agg if r["layer"] == layer)
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=layer)
        ax.set_title(model)
        ax.set_xlabel("fraction of training")
        ax.set_ylabel(f"{measure}: step 0 vs {last}")
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=8)
    return save_figure(fig, path)


def _inner_vs_training_figure(data: dict, measure: str, last: int, path: Path) -> Path:
    from callbacks.plots import new_figure

    fig = new_figure(6, 3.6)
    ax = fig.add_subplot()
    checkpoints = _checkpoints(data, "maml")[1:]
    inner = [mean_ci([r["value"] for r in data["within"] if r["model"] == "maml" and r["layer"] == layer
                      and r["inner_step"] == last and r["measure"] == measure and r["checkpoint"] in checkpoints])
             for layer in LAYERS]
    between = [mean_ci([r["value"] for r in data["between"] if r["model"] == "maml" and r["layer"] == layer
                        and r["measure"] == measure]) for layer in LAYERS]
    x = np.arange(len(LAYERS))
    for offset, ests, label in ((-0.2, inner, f"inner loop (0 vs {last})"), (0.2, between, "between checkpoints")):
        ax.bar(x + offset, [e.mean for e in ests], width=0.4, label=label,
               yerr=[0 if e.n < 2 else (e.high - e.low) / 2 for e in ests], capsize=3)
    ax.set_xticks(x, LAYERS)
    ax.set_ylabel(f"{measure} dissimilarity")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return save_figure(fig, path)
