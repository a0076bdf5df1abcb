"""A classifier for pretraining and fine-tuning: conv4 or any timm model, with explicit fine-tuning mode.

``ClassificationModule`` is shared by the fine-tuning study (study 2) and the transfer study (study 4).
Everything that decides what a fine-tuning run does is a constructor argument, so it lands in the
checkpoint's hyperparameters and in the W&B config:

- ``backbone``: ``"conv4"`` (modules/nets/conv4.py) or any timm model name (``"resnet18"``, ...);
- ``finetune_mode``: which layer groups train, see :mod:`modules.finetune_modes`
  (``full``, ``head``, ``lower``, ``body``, ``groups`` with ``trainable=[...]``). ``lower`` trains
  the first ``lower_layers`` body groups **and the head**: a lower arm with a frozen (possibly
  random) classifier is not comparable with head-only fine-tuning, whose classifier trains;
- ``head_policy``: what :meth:`load_pretrained` does with the source head: ``"reinit"`` draws a fresh
  head from ``head_seed`` (needed when the class count changes), ``"keep"`` loads it too.

Frozen groups are bit-identical after training: their parameters get no gradient and are not in
the optimizer, and their BatchNorm layers stay in eval mode (``train()`` is overridden), so the
running statistics of frozen layers do not follow the target data. Trainable BatchNorm layers
train normally.

Typical use::

    module = ClassificationModule("conv4", num_classes=5, finetune_mode="head", head_policy="reinit")
    module.load_pretrained("results/finetune/pretrain__seed=0__.../encoder.pt")
    trainer.fit(module, datamodule)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from analysis.states import load_state
from modules.distributed import release_process_group_at_exit
from modules.finetune_modes import (
    HEAD_POLICIES,
    FinetuneConfigError,
    LayerGroups,
    check_name,
    conv4_groups,
    did_you_mean,
    freeze_groups,
    frozen_norm_layers,
    select_trainable,
    timm_groups,
)
from modules.nets.conv4 import Conv4

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "cosine")


def build_backbone(backbone: str, num_classes: int, in_channels: int = 1, image_size: int = 28,
                   hidden: int = 64, pretrained: bool = False) -> tuple[nn.Module, LayerGroups]:
    """The network and its layer groups: conv4, or a timm model created with ``num_classes`` outputs."""
    if backbone == "conv4":
        if pretrained:
            raise FinetuneConfigError("conv4 has no published pretrained weights",
                                      "set pretrained=False (pretrain it with the study's source stage)")
        net = Conv4(num_classes, in_channels=in_channels, hidden=hidden, image_size=image_size)
        return net, conv4_groups(net)
    import timm

    if not timm.is_model(backbone):
        raise FinetuneConfigError(
            f'unknown backbone "{backbone}".{did_you_mean(backbone, ["conv4", *timm.list_models()])}',
            'use "conv4" or a timm model name (timm.list_models() lists them, e.g. "resnet18")')
    try:
        net = timm.create_model(backbone, pretrained=pretrained, num_classes=num_classes,
                                in_chans=in_channels)
    except (RuntimeError, OSError) as err:
        if not pretrained:
            raise
        raise FinetuneConfigError(f"could not load pretrained weights for {backbone} ({err})",
                                  "allow downloads (network and HF cache) or set pretrained=False") from err
    return net, timm_groups(net)


def _strip_prefix(state: Mapping[str, torch.Tensor], prefix: str = "net.") -> dict[str, torch.Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def read_state(source: Mapping[str, torch.Tensor] | str | os.PathLike) -> dict[str, torch.Tensor]:
    """A network state dict from a dict, a Lightning ``.ckpt`` or a torch ``.pt`` (no ``net.`` prefix): the
    one weights loader (analysis.states.load_state, weights_only) with the module's prefix removed."""
    return _strip_prefix(load_state(source))


class ClassificationModule(L.LightningModule):
    """Image classifier with explicit fine-tuning mode and head policy.

    Args:
        backbone: ``"conv4"`` or a timm model name.
        num_classes: outputs of the head.
        in_channels, image_size, hidden: input channels; image side (conv4 sizes its head from it);
            conv4 width.
        pretrained: timm ImageNet weights (needs downloads; conv4 has none).
        lr, optimizer, momentum, weight_decay, scheduler: ``adam``/``adamw``/``sgd``; ``none``/``cosine``
            (cosine over ``trainer.max_epochs``).
        finetune_mode, trainable, lower_layers: which groups train (``select_trainable`` of
            modules.finetune_modes; ``lower`` trains the first ``lower_layers`` body groups and the head).
        head_policy: ``"reinit"`` or ``"keep"``: applied by :meth:`load_pretrained`.
        head_seed: seed of a re-initialised head (the head is the same for every mode of a seed).
    """

    def __init__(
        self,
        backbone: str = "conv4",
        num_classes: int = 10,
        *,
        in_channels: int = 1,
        image_size: int = 28,
        hidden: int = 64,
        pretrained: bool = False,
        lr: float = 1e-3,
        optimizer: str = "adam",
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        scheduler: str = "none",
        finetune_mode: str = "full",
        trainable: Sequence[str] | None = None,
        lower_layers: int | None = None,
        head_policy: str = "reinit",
        head_seed: int = 0,
    ) -> None:
        super().__init__()
        check_name("optimizer", optimizer, OPTIMIZERS)
        check_name("scheduler", scheduler, SCHEDULERS)
        check_name("head policy", head_policy, HEAD_POLICIES)
        if num_classes < 1:
            raise FinetuneConfigError(f"num_classes={num_classes} must be at least 1",
                                      "pass the target's class count")
        if trainable is not None:
            trainable = list(trainable)
        self.save_hyperparameters()
        self.net, self.groups = build_backbone(backbone, num_classes, in_channels, image_size, hidden,
                                               pretrained)
        self.trainable_groups = select_trainable(finetune_mode, self.groups, trainable, lower_layers)
        self.frozen_params = freeze_groups(self.net, self.groups, self.trainable_groups)
        self._frozen_norms = frozen_norm_layers(self.net, self.groups, self.trainable_groups)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.train()  # puts the frozen BatchNorm layers in eval mode from the start

    # -- structure ---------------------------------------------------------------------------------
    @property
    def layer_names(self) -> list[str]:
        """Group names, input side first, head last (``block1 .. head`` for conv4)."""
        return list(self.groups.names)

    def layer_module(self, group: str) -> str:
        """The module path (inside this LightningModule) whose output represents ``group``."""
        check_name("layer group", group, self.groups.names)
        return f"net.{group}"

    def default_watch_layers(self) -> list[str]:
        """What similarity callbacks watch by default: one module per layer group."""
        return [self.layer_module(g) for g in self.groups.names]

    def head_module(self) -> nn.Module:
        return self.net.get_submodule(self.groups.head)

    def frozen_state(self) -> dict[str, torch.Tensor]:
        """A copy of everything that must not change: frozen parameters and frozen norm buffers."""
        frozen_norm_ids = {id(m) for m in self._frozen_norms}
        frozen = set(self.frozen_params)
        state = {k: v.detach().clone() for k, v in self.net.named_parameters() if k in frozen}
        for name, module in self.net.named_modules():
            if id(module) in frozen_norm_ids:
                for key, buffer in module.named_buffers(recurse=False):
                    state[f"{name}.{key}"] = buffer.detach().clone()
        return state

    # -- weights -----------------------------------------------------------------------------------
    def reset_head(self, seed: int | None = None) -> None:
        """Re-initialise the head with ``seed`` (default ``head_seed``) without touching the global RNG."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.hparams.head_seed if seed is None else seed)
            for module in self.head_module().modules():
                reset = getattr(module, "reset_parameters", None)
                if callable(reset):
                    reset()

    def load_pretrained(self, source: Mapping[str, torch.Tensor] | str | os.PathLike,
                        head_policy: str | None = None) -> None:
        """Load source weights; the head is re-initialised (``reinit``) or loaded too (``keep``)."""
        policy = check_name("head policy", head_policy or self.hparams.head_policy, HEAD_POLICIES)
        state = read_state(source)
        own = self.net.state_dict()
        head_keys = {k for k in own if k.startswith(self.groups.head + ".")}
        if policy == "keep":
            mismatched = [k for k in head_keys if k in state and state[k].shape != own[k].shape]
            if mismatched:
                raise FinetuneConfigError(
                    f"the source head {tuple(state[mismatched[0]].shape)} does not fit this head "
                    f"{tuple(own[mismatched[0]].shape)} (different class counts)",
                    'use head_policy="reinit" or a target with as many classes as the source')
        body_state = {k: v for k, v in state.items() if k not in head_keys}
        missing = sorted(set(own) - head_keys - set(body_state))
        unexpected = sorted(set(body_state) - set(own))
        reshaped = sorted(k for k in set(body_state) & set(own) if body_state[k].shape != own[k].shape)
        if missing or unexpected or reshaped:
            raise FinetuneConfigError(f"the pretrained weights do not fit {self.hparams.backbone}: missing "
                                      f"{missing[:4]}, unexpected {unexpected[:4]}, other shapes {reshaped[:4]}",
                                      "pretrain with the same backbone, in_channels, hidden and image_size")
        if policy == "keep":
            self.net.load_state_dict(state, strict=True)
        else:
            self.net.load_state_dict(body_state, strict=False)
            self.reset_head()

    # -- train/eval mode -----------------------------------------------------------------------------
    def train(self, mode: bool = True) -> ClassificationModule:
        """Like ``nn.Module.train`` but BatchNorm layers of frozen groups always stay in eval mode."""
        super().train(mode)
        for module in self._frozen_norms:
            module.train(False)
        return self

    def on_train_epoch_start(self) -> None:
        # Lightning keeps submodule modes as it finds them; re-assert eval mode on frozen norms anyway in
        # case something called ``.train()`` on a submodule directly.
        for module in self._frozen_norms:
            module.train(False)

    # -- Lightning ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: Any, split: str, metric: MulticlassAccuracy) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        metric(logits, y)
        on_step = split == "train"
        self.log(f"{split}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=split != "test",
                 batch_size=len(y), sync_dist=True)
        self.log(f"{split}/acc", metric, on_step=False, on_epoch=True, prog_bar=split != "train",
                 batch_size=len(y))
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", self.train_acc)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val", self.val_acc)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test", self.test_acc)

    def setup(self, stage: str) -> None:
        release_process_group_at_exit()

    def configure_optimizers(self) -> Any:
        params = [p for p in self.net.parameters() if p.requires_grad]
        hp = self.hparams
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        elif hp.optimizer == "adamw":
            optimizer = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            optimizer = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.scheduler == "cosine":
            epochs = max(1, int(self.trainer.max_epochs or 1))
            return {"optimizer": optimizer,
                    "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)}
        return optimizer
