"""U-Net builders and the parts a transfer study moves between models: encoder, decoder, head.

A U-Net from segmentation-models-pytorch (smp) has three parts: ``encoder`` (a timm backbone, smp
name ``"tu-<timm name>"``), ``decoder`` (the upsampling path with skip connections) and
``segmentation_head`` (a 3x3 conv to the classes). Transfer moves the encoder and the decoder; the head
depends on the number of output channels of the task, so it always starts fresh. Weights never come
from the internet here: smp is always built with ``encoder_weights=None`` (ImageNet weights come from
:mod:`modules.nets.imagenet`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from analysis.errors import did_you_mean

PARTS = ("encoder", "decoder", "segmentation_head")
DEFAULT_ENCODER = "tu-tf_efficientnet_lite0"
DEFAULT_DECODER_CHANNELS = (64, 32, 16, 16, 16)


class UNetConfigError(ValueError):
    """A U-Net that cannot be built or loaded as asked; the message names the problem and the fix."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem.rstrip('.')}. Fix: {fix}")


def check_encoder_name(encoder: str) -> str:
    """Accept smp timm encoders ``"tu-<timm name>"`` whose timm name exists; suggest close names otherwise."""
    import timm

    if not encoder.startswith("tu-"):
        raise UNetConfigError(f'encoder "{encoder}" is not a timm encoder',
                              f'write timm encoders as "tu-<timm name>", e.g. "{DEFAULT_ENCODER}"')
    name = encoder[3:]
    known = timm.list_models()
    if name not in known:
        hint = did_you_mean(encoder, [f"tu-{k}" for k in known])
        raise UNetConfigError(f'unknown encoder "{encoder}".{hint}',
                              'use "tu-" + a name from timm.list_models()')
    return encoder


def build_unet(encoder: str = DEFAULT_ENCODER, classes: int = 2, in_channels: int = 3,
               decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS, encoder_depth: int = 5) -> nn.Module:
    """An smp U-Net with a randomly initialised timm encoder (no downloads).

    Weights are stored channels-last: on this CPU a training step of the EfficientNet-Lite0 U-Net is ~13%
    faster that way (medians over alternated repeats), and inputs need no conversion."""
    import segmentation_models_pytorch as smp

    check_encoder_name(encoder)
    if classes < 1:
        raise UNetConfigError(f"classes={classes} must be >= 1", "use 2 or more for Dice + cross-entropy")
    if len(decoder_channels) != encoder_depth:
        raise UNetConfigError(f"decoder_channels {list(decoder_channels)} has {len(decoder_channels)} entries "
                              f"but encoder_depth is {encoder_depth}", "give one channel count per depth")
    net = smp.Unet(encoder_name=encoder, encoder_weights=None, in_channels=in_channels, classes=classes,
                   decoder_channels=tuple(decoder_channels), encoder_depth=encoder_depth)
    return net.to(memory_format=torch.channels_last)


def part(unet: nn.Module, name: str) -> nn.Module:
    """One of ``PARTS`` of a U-Net (did-you-mean on typos)."""
    if name not in PARTS:
        raise UNetConfigError(f'unknown U-Net part "{name}".{did_you_mean(name, PARTS)}',
                              f"use one of: {', '.join(PARTS)}")
    return getattr(unet, name)


def part_state(unet: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """A detached CPU copy of one part's state dict (keys relative to the part)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in part(unet, name).state_dict().items()}


def load_part(unet: nn.Module, name: str, state: Mapping[str, torch.Tensor]) -> None:
    """Load a part's state dict strictly: every tensor must be present with the same shape."""
    target = part(unet, name)
    own = target.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        raise UNetConfigError(
            f"the {name} weights do not fit this U-Net (missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"wrong shape {wrong[:3]})",
            "build the target U-Net with the same encoder name, decoder_channels and encoder_depth as the source")
    target.load_state_dict(dict(state), strict=True)


def set_frozen(module: nn.Module, frozen: bool) -> None:
    """Freeze (requires_grad False) or unfreeze every parameter of ``module``.

    Frozen modules also keep their BatchNorm statistics: :func:`keep_frozen_norms_in_eval` must be
    called after every ``model.train()`` (the LightningModules do this in ``on_train_epoch_start``).
    """
    for p in module.parameters():
        p.requires_grad_(not frozen)


def keep_frozen_norms_in_eval(module: nn.Module) -> None:
    """Put BatchNorm layers whose parameters are all frozen into eval mode (running stats stay fixed)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                m.eval()


def encoder_stages(unet: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The encoder's stage outputs for ``x`` (deepest last), without the identity stage 0 (the input)."""
    features = unet.encoder(x)
    return list(features[1:])


def stage_names(unet: nn.Module) -> list[str]:
    """Names ``stage1`` .. ``stageK`` with their channel counts, e.g. ``stage3 (40 ch)``."""
    return [f"stage{i}" for i in range(1, len(unet.encoder.out_channels))]
