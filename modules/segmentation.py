"""SegmentationModule: an smp U-Net with a timm encoder whose parts start and stay as the study asks.

Initialisation is explicit and separate for encoder and decoder:
- ``encoder_init``: ``"random"`` | ``"imagenet"`` (real ImageNet weights, :mod:`modules.nets.imagenet`) |
  ``"checkpoint"`` (the ``encoder`` entry of a parts file written by a source run, ``encoder_checkpoint``);
- ``decoder_init``: ``"random"`` | ``"checkpoint"`` (the ``decoder`` entry of ``decoder_checkpoint``).
The segmentation head (a 3x3 conv to the classes) always starts fresh: its size depends on the task.
``freeze``: ``"none"`` | ``"encoder"`` | ``"decoder"``; frozen parameters get no gradient. ``frozen_norms``
is the BatchNorm policy of a frozen part: ``"eval"`` (default, as smp's ``freeze_encoder()``: its BatchNorm
layers stay in eval mode and normalise with their stored running statistics, which never change) or
``"train"`` (they normalise with batch statistics and update their running statistics, so the frozen part's
function drifts although no weight is trained).

Optimiser: AdamW; ``schedule`` ``"constant"`` or ``"cosine"`` (cosine decay of the learning rate to 0 over the
Trainer's ``max_epochs``, stepped per epoch, so a run ends on a plateau whatever its budget).

Loss: ``dice_weight`` x soft Dice (smp ``DiceLoss``, multiclass, classes present in the batch) +
``ce_weight`` x cross-entropy, both weights 1 by default.

Metrics (torchmetrics, ``input_format="index"``, background excluded):
- Dice = ``DiceScore(average="macro", aggregation_level="samplewise")``: per image, the Dice of each
  foreground class, averaged over the classes, then averaged over images (images where a class is absent
  in both prediction and target give NaN for it and are skipped by the NaN-mean);
- IoU = ``MeanIoU``: per image and foreground class IoU, averaged over the (image, class) pairs where the
  class occurs in the prediction or the target.
Logged per epoch: ``train/loss``, ``val/dice``, ``val/iou`` (+ ``val/loss``); ``test/dice``, ``test/iou``.
The per-epoch validation curve, with the optimiser step it was measured at, is also kept in ``history`` (saved
in checkpoints, so it survives resume). The test also keeps every test image's own Dice in ``test_image_dice``
(the spread of Dice over images says how much of a run's test Dice is evaluation noise).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.segmentation import DiceScore, MeanIoU

from analysis.errors import did_you_mean
from analysis.files import atomic_write
from modules.distributed import release_process_group_at_exit
from modules.nets.unet import (
    DEFAULT_DECODER_CHANNELS,
    DEFAULT_ENCODER,
    UNetConfigError,
    build_unet,
    keep_frozen_norms_in_eval,
    load_part,
    set_frozen,
)

ENCODER_INITS = ("random", "imagenet", "checkpoint")
DECODER_INITS = ("random", "checkpoint")
FREEZE_POLICIES = ("none", "encoder", "decoder")
FROZEN_NORM_POLICIES = ("eval", "train")
SCHEDULES = ("constant", "cosine")


def optimiser_and_schedule(module: L.LightningModule, lr: float, weight_decay: float, schedule: str):
    """AdamW over the trainable parameters, with a per-epoch cosine decay to 0 over ``max_epochs`` if asked."""
    params = [p for p in module.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if schedule == "constant":
        return optimiser
    epochs = max(1, int(module.trainer.max_epochs or 1))
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=epochs)
    return {"optimizer": optimiser, "lr_scheduler": {"scheduler": cosine, "interval": "epoch"}}


def image_dice(pred: torch.Tensor, target: torch.Tensor, classes: int) -> torch.Tensor:
    """Per image (N,): the Dice of each foreground class, averaged over the classes present in the prediction
    or the target (NaN where none is), as torchmetrics' samplewise macro DiceScore without background."""
    per_class = []
    for c in range(1, max(classes, 2)):
        p, t = pred == c, target == c
        inter = (p & t).flatten(1).sum(1).float()
        total = p.flatten(1).sum(1).float() + t.flatten(1).sum(1).float()
        per_class.append(torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.nan))
    return torch.stack(per_class, 1).nanmean(1)


def check_choice(kind: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise UNetConfigError(f'unknown {kind} "{value}".{did_you_mean(value, choices)}',
                              f"use one of: {', '.join(choices)}")
    return value


def unpack_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(image, mask, label) from a dict batch (``image``/``mask``/``label``) or a tuple (image, mask[, label])."""
    if isinstance(batch, Mapping):
        return batch["image"], batch.get("mask"), batch.get("label")
    if isinstance(batch, list | tuple):
        items = list(batch) + [None] * (3 - len(batch))
        return items[0], items[1], items[2]
    return batch, None, None


def as_index_mask(mask: torch.Tensor) -> torch.Tensor:
    """(N, H, W) long class indices from (N, H, W) or (N, 1, H, W) integer / {0, 1} float masks."""
    if mask.dim() == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.is_floating_point():
        mask = mask.round()
    return mask.long()


def save_parts(path: str | os.PathLike, parts: Mapping[str, nn.Module], meta: Mapping[str, Any]) -> Path:
    """Write U-Net parts ({"encoder": module, ...}) + ``meta`` (how to rebuild them) to ``path`` atomically.

    This parts file is what a source run transfers to the target runs.
    """
    path = Path(path)
    payload: dict[str, Any] = {"meta": dict(meta)}
    for name, module in parts.items():
        payload[name] = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def read_parts(path: str | os.PathLike) -> dict[str, Any]:
    """Read a parts file written by :func:`save_parts`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no transferred weights at {path}. Fix: run the source stage first (the benchmark "
                                "does this) or point encoder_checkpoint/decoder_checkpoint at an existing parts.pt")
    return torch.load(path, map_location="cpu", weights_only=True)


class SegmentationModule(L.LightningModule):
    """U-Net segmentation with explicit init and freeze policies for encoder and decoder (see module doc)."""

    def __init__(
        self,
        encoder: str = DEFAULT_ENCODER,
        classes: int = 2,
        in_channels: int = 3,
        decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
        encoder_init: str = "random",
        decoder_init: str = "random",
        encoder_checkpoint: str | None = None,
        decoder_checkpoint: str | None = None,
        freeze: str = "none",
        frozen_norms: str = "eval",
        schedule: str = "constant",
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        input_mean: Sequence[float] = (0.5, 0.5, 0.5),
        input_std: Sequence[float] = (0.5, 0.5, 0.5),
        allow_download: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_choice("encoder_init", encoder_init, ENCODER_INITS)
        check_choice("decoder_init", decoder_init, DECODER_INITS)
        check_choice("freeze policy", freeze, FREEZE_POLICIES)
        check_choice("frozen_norms policy", frozen_norms, FROZEN_NORM_POLICIES)
        check_choice("schedule", schedule, SCHEDULES)
        if encoder_init == "checkpoint" and not encoder_checkpoint:
            raise UNetConfigError('encoder_init="checkpoint" needs encoder_checkpoint',
                                  "pass the parts.pt of a source run as encoder_checkpoint")
        if decoder_init == "checkpoint" and not decoder_checkpoint:
            raise UNetConfigError('decoder_init="checkpoint" needs decoder_checkpoint',
                                  "pass the parts.pt of a source run that has a decoder as decoder_checkpoint")
        self.net = build_unet(encoder, classes, in_channels, decoder_channels)
        self.register_buffer("input_mean", torch.tensor(list(input_mean)).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(list(input_std)).view(1, -1, 1, 1), persistent=False)
        self.initialise()
        self.apply_freeze()
        from segmentation_models_pytorch.losses import DiceLoss

        self.dice_loss = DiceLoss(mode="multiclass" if classes > 1 else "binary", from_logits=True)
        self.val_dice, self.val_iou = self._metrics()
        self.test_dice, self.test_iou = self._metrics()
        self.history: list[dict[str, float]] = []
        self.test_image_dice: list[float] = []
        self._train_losses: list[torch.Tensor] = []

    # ----- construction -------------------------------------------------------------------------
    def _metrics(self) -> tuple[DiceScore, MeanIoU]:
        classes = max(self.hparams.classes, 2)
        dice = DiceScore(num_classes=classes, include_background=False, average="macro",
                         aggregation_level="samplewise", input_format="index")
        iou = MeanIoU(num_classes=classes, include_background=False, per_class=False, input_format="index")
        return dice, iou

    def initialise(self) -> None:
        """Apply ``encoder_init`` and ``decoder_init`` (random parts keep their fresh initialisation)."""
        hp = self.hparams
        if hp.encoder_init == "imagenet":
            from modules.nets.imagenet import load_imagenet_encoder

            load_imagenet_encoder(self.net.encoder, hp.encoder, allow_download=hp.allow_download)
        elif hp.encoder_init == "checkpoint":
            load_part(self.net, "encoder", self._part_from(hp.encoder_checkpoint, "encoder"))
        if hp.decoder_init == "checkpoint":
            load_part(self.net, "decoder", self._part_from(hp.decoder_checkpoint, "decoder"))

    @staticmethod
    def _part_from(path: str, name: str) -> dict[str, torch.Tensor]:
        parts = read_parts(path)
        if name not in parts:
            have = [k for k in parts if k != "meta"]
            raise UNetConfigError(f"{path} holds no {name} (it holds {have})",
                                  f"use {name}_init=\"random\" or a source that trains a {name}")
        return parts[name]

    def apply_freeze(self) -> None:
        policy = self.hparams.freeze
        set_frozen(self.net.encoder, policy == "encoder")
        set_frozen(self.net.decoder, policy == "decoder")

    # ----- forward / steps ----------------------------------------------------------------------
    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.input_mean) / self.input_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, classes, H, W) for [0, 1] images (N, C, H, W)."""
        return self.net(self.normalise(x))

    def loss(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, mask)
        return self.hparams.dice_weight * self.dice_loss(logits, mask) + self.hparams.ce_weight * ce

    def on_train_epoch_start(self) -> None:
        if self.hparams.frozen_norms == "eval":
            keep_frozen_norms_in_eval(self.net)
        self._train_losses = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, mask, _ = unpack_batch(batch)
        loss = self.loss(self(x), as_index_mask(mask))
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x), sync_dist=True)
        self._train_losses.append(loss.detach())
        return loss

    def _evaluate(self, batch: Any, dice: DiceScore, iou: MeanIoU, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Update and log the metrics of one batch; return (predicted, true) class indices."""
        x, mask, _ = unpack_batch(batch)
        mask = as_index_mask(mask)
        logits = self(x)
        pred = logits.argmax(1)
        dice.update(pred, mask)
        iou.update(pred, mask)
        self.log(f"{prefix}/loss", self.loss(logits, mask), on_step=False, on_epoch=True, batch_size=len(x),
                 sync_dist=True)
        self.log(f"{prefix}/dice", dice, on_step=False, on_epoch=True, prog_bar=prefix == "val")
        self.log(f"{prefix}/iou", iou, on_step=False, on_epoch=True)
        return pred, mask

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, self.val_dice, self.val_iou, "val")

    def on_test_epoch_start(self) -> None:
        self.test_image_dice = []

    def test_step(self, batch: Any, batch_idx: int) -> None:
        pred, mask = self._evaluate(batch, self.test_dice, self.test_iou, "test")
        self.test_image_dice += image_dice(pred, mask, self.hparams.classes).tolist()

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        # callback_metrics are refreshed only after this hook: read the metric objects themselves.
        row = {"epoch": int(self.current_epoch), "step": int(self.global_step),
               "val/dice": float(self.val_dice.compute()),
               "val/iou": float(self.val_iou.compute())}
        if self._train_losses:
            row["train/loss"] = float(torch.stack(self._train_losses).mean())
        if self.history and self.history[-1]["epoch"] == row["epoch"]:
            self.history[-1] = row
        else:
            self.history.append(row)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["segmentation_history"] = list(self.history)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get("segmentation_history", []))

    def setup(self, stage: str) -> None:
        release_process_group_at_exit()

    def configure_optimizers(self):
        return optimiser_and_schedule(self, self.hparams.lr, self.hparams.weight_decay, self.hparams.schedule)

    def transferable_parts(self) -> dict[str, nn.Module]:
        """What a source run of this module hands on: its encoder and decoder (the head is task-specific)."""
        return {"encoder": self.net.encoder, "decoder": self.net.decoder}

    def default_watch_layers(self) -> list[str]:
        """The encoder stages whose outputs feed the decoder (timm ``feature_info``), shallow to deep."""
        return [f"net.encoder.model.{name}" for name in self.net.encoder.model.feature_info.module_name()]
