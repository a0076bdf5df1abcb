"""Training side of the what-is-transferred study: source pretraining and downstream training.

- ``pretrain_source``: conv4 learns the source task (every character of glyph alphabets disjoint from the
  target's, or Fashion-MNIST) with the profile's decay schedule; its weights are kept at chosen steps
  through pretraining (``weights/step000123.pt``, step 0 = the random init) and the last ones as
  ``encoder.pt``; ``history.json`` holds the per-epoch curve (convergence).
- ``train_downstream``: a classifier learns the target (glyph classes) from the source weights
  (P-T, arm ``pretrained``) or from a random init (R-T, arm ``random``) at one learning rate of the grid
  both arms share (``train.lrs``, the run's ``lr`` param), on images whose b x b
  blocks are permuted by one fixed permutation (datamodules/transforms.py ``BlockShuffle``, applied
  after normalisation, the same for train and test). The run keeps ``init.pt`` (theta0: the
  pretrained weights with a fresh head for P-T, the random init for R-T), ``final.pt`` and
  ``history.json`` (per-epoch train/val accuracy: the training-speed curves).

The target task (which characters, which instances are train/val/test) is fixed by ``target.task_seed``;
a run's ``seed`` sets the init (R-T), the fresh head (P-T), the order of training batches and the
block permutation, so two seeds are two independent runs on the same task.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch import Callback
from torch import nn
from torch.utils.data import DataLoader

from benchmarks.core.errors import UserError, unknown_name
from benchmarks.core.runstore import atomic_save_state, atomic_write_json
from benchmarks.core.training import KeepWeights, weight_file
from benchmarks.studies.transfer.protocol import ARMS, BACKBONE_KINDS

PERMUTATION_OFFSET = 1234  # the block permutation of seed s is drawn from seed s + 1234 (as the paper's code)


# ============================================================================================ data
class RepeatChannels:
    """[1, H, W] -> [n, H, W]: grey glyphs for a network that expects RGB (ImageNet weights)."""

    def __init__(self, channels: int) -> None:
        self.channels = channels

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(self.channels, *x.shape[-2:]) if x.shape[-3] == 1 else x


class Normalise:
    """Per-channel (x - mean) / std on [C, H, W] images already scaled to [0, 1]."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Compose:
    def __init__(self, steps: Sequence[Any]) -> None:
        self.steps = [s for s in steps if s is not None]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            x = step(x)
        return x


def block_shuffle(image_size: int, block: int, seed: int):
    """The datamodules' ``BlockShuffle`` for this run (None for the intact image, b = image size)."""
    from datamodules.transforms import BlockShuffle

    if block == image_size:
        return None
    try:
        return BlockShuffle(image_size, block, seed=seed + PERMUTATION_OFFSET)
    except ValueError as err:
        raise UserError(f"block size {block} does not fit images of side {image_size} ({err})",
                        "list divisors of the image size under sources.<name>.block_sizes") from None


def target_datamodule(target: Mapping[str, Any], source: Mapping[str, Any], block: int, seed: int):
    """The glyph task of the study with this run's block shuffle (normalised first, then shuffled)."""
    from datamodules.glyphs import GlyphDataModule

    if target["dataset"] != "glyphs":
        raise unknown_name("target dataset", target["dataset"], ["glyphs"])
    size = int(source["image_size"])
    shuffle = block_shuffle(size, int(block), seed)
    rgb = int(source["in_channels"]) == 3
    if rgb:  # ImageNet weights: [0, 1] grey -> RGB -> ImageNet normalisation -> block shuffle
        from modules.nets.imagenet import imagenet_normalisation

        mean, std = imagenet_normalisation(source["backbone"])
        transform = Compose([RepeatChannels(3), Normalise(mean, std), shuffle])
    else:
        transform = Compose([shuffle])
    return GlyphDataModule(
        seed=int(target["task_seed"]), batch_size=int(source["train"]["batch_size"]), n_classes=int(target["classes"]),
        alphabet_split=target["alphabet_split"], n_train_per_class=int(target["train_per_class"]),
        n_val_per_class=int(target["val_per_class"]), n_test_per_class=int(target["test_per_class"]),
        image_size=size, instances_per_char=int(target["instances_per_char"]), normalize=not rgb,
        input_transform=transform if transform.steps else None)


def seeded_loader(dataset, batch_size: int, seed: int | None) -> DataLoader:
    """Shuffled in an order drawn from (``seed``, epoch), or in order when ``seed`` is None. The order depends
    on nothing else, so a run resumed from an epoch's checkpoint sees the batches the uninterrupted run saw."""
    from datamodules.samplers import EpochSeededRandomSampler

    if seed is None:
        return DataLoader(dataset, batch_size=batch_size, shuffle=False)
    return DataLoader(dataset, batch_size=batch_size, sampler=EpochSeededRandomSampler(len(dataset), seed=seed))


# ============================================================================================ models
def build_classifier(source: Mapping[str, Any], num_classes: int, optim: Mapping[str, Any], seed: int):
    """A ``ClassificationModule`` for ``source``'s backbone, randomly initialised from ``seed``."""
    from modules.classification import ClassificationModule

    kind = source["kind"]
    if kind not in BACKBONE_KINDS:
        raise unknown_name("source kind", kind, BACKBONE_KINDS)
    L.seed_everything(seed, workers=True, verbose=False)
    return ClassificationModule(
        source["backbone"], num_classes, in_channels=int(source["in_channels"]),
        image_size=int(source["image_size"]), hidden=int(source.get("hidden", 64)), lr=float(optim["lr"]),
        optimizer=optim["optimizer"], momentum=float(optim.get("momentum", 0.9)),
        weight_decay=float(optim.get("weight_decay", 0.0)), scheduler=optim.get("scheduler", "none"),
        finetune_mode="full", head_policy="reinit", head_seed=seed)


def source_weights(source: Mapping[str, Any], pretrain_dir: Path | None, step: int | None = None
                   ) -> dict[str, torch.Tensor]:
    """The source network's weights: ImageNet (embedded EfficientNet-Lite0) or a pretraining run's."""
    if source["kind"] == "imagenet":
        from modules.nets.imagenet import imagenet_state

        return imagenet_state(source["backbone"], allow_download=bool(source.get("allow_download", False)))
    assert pretrain_dir is not None, "a conv4 source needs its pretraining run"
    path = pretrain_dir / "encoder.pt" if step is None else weight_file(pretrain_dir / "weights", step)
    if not path.exists():
        raise FileNotFoundError(f"no source weights at {path}. Fix: re-run the pretrain stage "
                                "(python -m benchmarks transfer --stage pretrain)")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_source(module, state: Mapping[str, torch.Tensor]) -> None:
    """P-T init: the source body, a fresh head from the module's ``head_seed``.

    Counters that converted weights may lack (BatchNorm ``num_batches_tracked``) are taken from the
    module itself: they hold no learned value.
    """
    own = module.net.state_dict()
    full = dict(state)
    for key, value in own.items():
        if key.endswith("num_batches_tracked") and key not in full:
            full[key] = value
    module.load_pretrained(full, head_policy="reinit")


def net_state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.net.state_dict().items()}


def save_state(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """torch.save to a temp file, then rename (readers never see half a file)."""
    atomic_save_state(path, dict(state))


# ============================================================================================ callbacks
class EpochHistory(Callback):
    """Per-epoch train/val accuracy and loss in ``history.json`` (kept across resumes)."""

    KEYS = {"train/acc": "train_acc", "train/loss_epoch": "train_loss", "val/acc": "val_acc",
            "val/loss": "val_loss"}

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, float]] = json.loads(self.path.read_text()) if self.path.exists() else []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        row = {"epoch": int(trainer.current_epoch) + 1}
        row.update({short: float(metrics[key]) for key, short in self.KEYS.items() if key in metrics})
        self.rows = [r for r in self.rows if r["epoch"] < row["epoch"]] + [row]
        atomic_write_json(self.path, self.rows)


def limits(limit_batches: int | None) -> dict[str, Any]:
    """Trainer options for smoke runs (a few batches per stage) or full epochs (None)."""
    if limit_batches is None:
        return {"num_sanity_val_steps": 0}
    n = int(limit_batches)
    return {"num_sanity_val_steps": 0, "limit_train_batches": n, "limit_val_batches": n, "limit_test_batches": n}


# ============================================================================================ stages
def pretrain_size(pretrain: Mapping[str, Any], image_size: int) -> int:
    """Training images of the source task (glyphs: classes x train_per_class, every character when classes is null)."""
    if pretrain["dataset"] != "glyphs":
        return int(pretrain["n_train"])
    classes = pretrain.get("classes")
    if classes is None:
        from datamodules.glyphs import build_glyphs

        glyphs = build_glyphs(image_size=int(image_size), instances_per_char=int(pretrain["instances_per_char"]))
        classes = len(glyphs.split_chars(pretrain["alphabet_split"]))
    return int(classes) * int(pretrain["train_per_class"])


def pretrain_steps(pretrain: Mapping[str, Any], image_size: int = 28) -> int:
    """Optimizer steps of the whole pretraining (epochs x batches per epoch)."""
    per_epoch = math.ceil(pretrain_size(pretrain, image_size) / int(pretrain["batch_size"]))
    if pretrain.get("limit_batches") is not None:
        per_epoch = min(per_epoch, int(pretrain["limit_batches"]))
    return int(pretrain["epochs"]) * per_epoch


def checkpoint_steps(pretrain: Mapping[str, Any], image_size: int = 28) -> list[int]:
    """The steps at which pretraining weights are kept (fractions of all steps; the last is always kept)."""
    total = pretrain_steps(pretrain, image_size)
    steps = {int(round(float(f) * total)) for f in pretrain["checkpoints"]}
    return sorted(steps | {total})


def source_datamodule(source: Mapping[str, Any], seed: int):
    """The source task: Fashion-MNIST (far from the glyph target) or every character of glyph alphabets
    disjoint from the target's (near: the same rendered-font domain, other scripts)."""
    pre = source["pretrain"]
    if pre["dataset"] == "fashion_mnist":
        from datamodules.fashion_mnist import FashionMNISTDataModule

        return FashionMNISTDataModule(seed=seed, batch_size=int(pre["batch_size"]), n_train=int(pre["n_train"]),
                                      n_test=int(pre["n_test"]), val_fraction=float(pre["val_fraction"]))
    if pre["dataset"] == "glyphs":
        from datamodules.glyphs import GlyphDataModule, build_glyphs

        size, instances = int(source["image_size"]), int(pre["instances_per_char"])
        classes = pre.get("classes")
        if classes is None:  # every character of the source alphabets
            classes = len(build_glyphs(image_size=size, instances_per_char=instances).split_chars(
                pre["alphabet_split"]))
        return GlyphDataModule(seed=seed, batch_size=int(pre["batch_size"]), n_classes=int(classes),
                               alphabet_split=pre["alphabet_split"], n_train_per_class=int(pre["train_per_class"]),
                               n_val_per_class=int(pre["val_per_class"]), n_test_per_class=int(pre["test_per_class"]),
                               image_size=size, instances_per_char=instances)
    raise unknown_name("source dataset", pre["dataset"], ["fashion_mnist", "glyphs"])


def pretrain_source(run, ctx) -> dict[str, float]:
    """Train conv4 on the source task; keep weights through pretraining; score each kept checkpoint."""
    from analysis.evaluation import evaluate

    source, pre = run.config["source"], run.config["source"]["pretrain"]
    dm = source_datamodule(source, ctx.seed)
    dm.setup()
    module = build_classifier(source, dm.num_classes, pre, ctx.seed)
    steps = checkpoint_steps(pre, int(source["image_size"]))
    weights = KeepWeights(ctx.run_dir / "weights", steps, state=net_state)
    history = EpochHistory(ctx.run_dir / "history.json")
    trainer = ctx.trainer(max_epochs=int(pre["epochs"]), callbacks=[weights, history],
                          **limits(pre.get("limit_batches")))
    batch = int(pre["batch_size"])
    train, val = seeded_loader(dm.dataset("train"), batch, ctx.seed), seeded_loader(dm.dataset("val"), 256, None)
    trainer.fit(module, train, val, ckpt_path=ctx.resume_path())
    save_state(net_state(module), ctx.run_dir / "encoder.pt")
    final = weight_file(ctx.run_dir / "weights", steps[-1])
    if not final.exists():
        save_state(net_state(module), final)
    # source accuracy of every kept checkpoint (the x-axis of "downstream vs pretraining checkpoint")
    metrics: dict[str, float] = {}
    probe = build_classifier(source, dm.num_classes, pre, ctx.seed)
    test = seeded_loader(dm.dataset("test"), 256, None)
    rows = []
    for step in steps:
        probe.net.load_state_dict(torch.load(weight_file(ctx.run_dir / "weights", step), weights_only=True))
        loss, error = evaluate(probe.net, test, max_batches=pre.get("limit_batches"))
        metrics[f"source_acc@{step}"] = 1.0 - float(error)
        rows.append({"pretrain/step": step, "pretrain/source_acc": 1.0 - float(error),
                     "pretrain/source_loss": loss})
    out = ctx.outputs()
    out.define_curve("pretrain", "pretrain/step", ["pretrain/source_acc", "pretrain/source_loss"])
    for row in rows:
        out.log(row)
    metrics["source_acc"] = metrics[f"source_acc@{steps[-1]}"]
    metrics["total_steps"] = float(steps[-1])
    metrics["source_classes"] = float(dm.num_classes)
    if history.rows:  # convergence: the last epochs' validation accuracy (the report shows the curve)
        metrics["source_val_acc"] = float(history.rows[-1].get("val_acc", math.nan))
        metrics["source_train_acc"] = float(history.rows[-1].get("train_acc", math.nan))
    return metrics


def train_downstream(run, ctx, init_state: Mapping[str, torch.Tensor] | None, arm: str,
                     block: int, lr: float) -> dict[str, float]:
    """Train on the target, shuffled in b x b blocks, from ``init_state`` (P-T) or from scratch (R-T),
    with learning rate ``lr`` of the grid both arms share and the profile's decay schedule."""
    source, target = run.config["source"], run.config["target"]
    train_cfg = source["train"]
    if arm not in ARMS:
        raise unknown_name("arm", arm, ARMS)
    optim = {**train_cfg["optim"], "lr": float(lr)}
    dm = target_datamodule(target, source, block, ctx.seed)
    dm.setup()
    module = build_classifier(source, dm.num_classes, optim, ctx.seed)
    if init_state is not None:
        load_source(module, init_state)
    init_path = ctx.run_dir / "init.pt"
    if not init_path.exists():
        save_state(net_state(module), init_path)
    history = EpochHistory(ctx.run_dir / "history.json")
    trainer = ctx.trainer(max_epochs=int(train_cfg["epochs"]), callbacks=[history],
                          **limits(target.get("limit_batches")))
    batch = int(train_cfg["batch_size"])
    train = seeded_loader(dm.dataset("train"), batch, ctx.seed)
    val = seeded_loader(dm.dataset("val"), 256, None)
    trainer.fit(module, train, val, ckpt_path=ctx.resume_path())
    save_state(net_state(module), ctx.run_dir / "final.pt")
    tested = trainer.test(module, seeded_loader(dm.dataset("test"), 256, None), verbose=False)[0]
    metrics = downstream_metrics(history.rows, tested, int(train_cfg["speed_epochs"]))
    metrics["lr"] = float(lr)
    # training speed and final accuracy in the W&B run summary (sortable in the runs table)
    ctx.outputs().summary({f"final/{k}": v for k, v in metrics.items()})
    return metrics


def downstream_metrics(rows: Sequence[Mapping[str, float]], tested: Mapping[str, float],
                       speed_epochs: int) -> dict[str, float]:
    """Final test accuracy/loss and training speed (mean accuracy over the first ``speed_epochs`` epochs)."""
    first = [r for r in rows if r["epoch"] <= speed_epochs]
    last = rows[-1] if rows else {}

    def mean_of(key: str) -> float:
        values = [r[key] for r in first if key in r]
        return float(sum(values) / len(values)) if values else math.nan

    return {"test_acc": float(tested["test/acc"]), "test_loss": float(tested["test/loss"]),
            "train_acc": float(last.get("train_acc", math.nan)), "val_acc": float(last.get("val_acc", math.nan)),
            "speed_train_acc": mean_of("train_acc"), "speed_val_acc": mean_of("val_acc"),
            "epochs": float(len(rows))}


def load_net(source: Mapping[str, Any], num_classes: int, state_path: Path) -> nn.Module:
    """A bare network of ``source``'s architecture holding the weights saved at ``state_path``."""
    module = build_classifier(source, num_classes, {"lr": 0.0, "optimizer": "sgd"}, 0)
    module.net.load_state_dict(torch.load(state_path, map_location="cpu", weights_only=True))
    return module.net.eval()
