"""Fine-tuning modes: which layer groups of a classifier train, and how the rest stays bit-identical.

A network is split into ordered *layer groups*, input side first and the classifier (head) last:
conv4 gives ``block1 .. block4, head``; a timm model gives one group per ``feature_info`` point
(resnet18: ``act1`` (the stem), ``layer1 .. layer4``), a group for any parameters between the last
feature point and the classifier (efficientnet: ``bn2``), and its classifier (``fc``). A group is
named after the module whose output is its representation, so the same name selects what trains
and what a similarity callback watches.

Modes (``FINETUNE_MODES``):
- ``"full"``: every group trains;
- ``"head"``: only the head trains (a linear probe on frozen features);
- ``"lower"``: the first ``lower_layers`` body groups and the head train (upper groups frozen):
  representation change confined to early layers, with a trained classifier like head-only's (a frozen,
  possibly random, head would make the two arms incomparable);
- ``"body"``: every group but the head (frozen head, as in BOIL);
- ``"groups"``: exactly the groups listed in ``trainable``.

Frozen groups get ``requires_grad=False``, stay out of the optimizer (no weight decay, no momentum
drift) and their normalisation layers are kept in eval mode, so BatchNorm running statistics do
not move either: a frozen group is bit-identical after training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from analysis.errors import did_you_mean

FINETUNE_MODES = ("full", "head", "lower", "body", "groups")
HEAD_POLICIES = ("reinit", "keep")


class FinetuneConfigError(ValueError):
    """A bad fine-tuning setting; ``str()`` names the problem and the fix."""

    def __init__(self, problem: str, fix: str) -> None:
        end = "" if problem.endswith(("?", "!")) else "."
        super().__init__(f"{problem.rstrip('.')}{end} Fix: {fix}")
        self.problem, self.fix = problem, fix


def check_name(kind: str, value: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``, else a did-you-mean error."""
    if value not in choices:
        raise FinetuneConfigError(f'unknown {kind} "{value}".{did_you_mean(value, choices)}',
                                  f"use one of: {', '.join(choices)}")
    return value


@dataclass(frozen=True)
class LayerGroups:
    """Ordered layer groups of a network (head last) and the parameter names of each."""

    names: tuple[str, ...]
    params: dict[str, tuple[str, ...]]
    head: str

    @property
    def body(self) -> tuple[str, ...]:
        return tuple(n for n in self.names if n != self.head)

    def group_of(self, param_name: str) -> str:
        for name, keys in self.params.items():
            if param_name in keys:
                return name
        raise KeyError(f"parameter {param_name!r} belongs to no layer group")


def _inside(name: str, ancestor: str) -> bool:
    return name == ancestor or name.startswith(ancestor + ".")


def conv4_groups(net: nn.Module) -> LayerGroups:
    """``block1 .. block4, head`` of a :class:`modules.nets.conv4.Conv4`."""
    names = ("block1", "block2", "block3", "block4", "head")
    params = {g: tuple(n for n, _ in net.named_parameters() if _inside(n, g)) for g in names}
    return LayerGroups(names=names, params=params, head="head")


def timm_head_name(model: nn.Module) -> str:
    """The classifier module of a timm model (``pretrained_cfg['classifier']``, e.g. ``fc``)."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    head = cfg.get("classifier")
    if isinstance(head, list | tuple):
        head = head[0]
    if not head or head not in dict(model.named_modules()):
        raise FinetuneConfigError(f"cannot find the classifier of {type(model).__name__}",
                                  "use a timm classification model (its pretrained_cfg names the classifier)")
    return str(head)


def timm_groups(model: nn.Module) -> LayerGroups:
    """Groups of a timm model cut at its ``feature_info`` points, plus the classifier.

    Walking modules in registration (= forward) order, a module's own parameters go to the first
    feature point not yet passed; parameters after the last feature point (other than the head)
    form one more group named after the last module that owns some of them.
    """
    head = timm_head_name(model)
    points = [str(info["module"]) for info in getattr(model, "feature_info", [])]
    if not points:
        raise FinetuneConfigError(f"{type(model).__name__} has no feature_info to cut layer groups at",
                                  "use a timm model created with timm.create_model (CNNs and ViTs have it)")
    params: dict[str, list[str]] = {p: [] for p in points}
    trailing: list[str] = []
    trailing_name = ""
    index, entered = 0, False
    head_params: list[str] = []
    for name, module in model.named_modules():
        own = [f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False)]
        if name and _inside(name, head):
            head_params += own
            continue
        if index < len(points) and entered and not _inside(name, points[index]):
            index, entered = index + 1, False
        if index < len(points) and name and _inside(name, points[index]):
            entered = True
        if index < len(points):
            params[points[index]] += own
        elif own:
            trailing += own
            trailing_name = name
    names = [p for p in points if params[p]] or points[:1]
    groups = {p: tuple(params[p]) for p in names}
    if trailing:
        groups[trailing_name] = tuple(trailing)
        names.append(trailing_name)
    groups[head] = tuple(head_params)
    return LayerGroups(names=tuple(names) + (head,), params=groups, head=head)


def select_trainable(mode: str, groups: LayerGroups, trainable: Sequence[str] | None = None,
                     lower_layers: int | None = None) -> list[str]:
    """The groups that train in ``mode`` (see the module docstring), in network order."""
    check_name("fine-tuning mode", mode, FINETUNE_MODES)
    if mode == "full":
        return list(groups.names)
    if mode == "head":
        return [groups.head]
    if mode == "body":
        return list(groups.body)
    if mode == "lower":
        count = len(groups.body) // 2 if lower_layers is None else int(lower_layers)
        if not 1 <= count <= len(groups.body):
            raise FinetuneConfigError(f"lower_layers={lower_layers} is outside 1..{len(groups.body)}",
                                      f"train between 1 and {len(groups.body)} body groups "
                                      f"({', '.join(groups.body)})")
        return [*groups.body[:count], groups.head]
    if not trainable:
        raise FinetuneConfigError('mode "groups" needs the list of groups to train',
                                  f"pass trainable=[...] with names from {', '.join(groups.names)}")
    for name in trainable:
        check_name("layer group", name, groups.names)
    return [n for n in groups.names if n in set(trainable)]


def freeze_groups(net: nn.Module, groups: LayerGroups, trainable: Sequence[str]) -> list[str]:
    """Set ``requires_grad`` per group; returns the names of the frozen parameters."""
    trainable_params = {p for g in trainable for p in groups.params[g]}
    frozen = []
    for name, parameter in net.named_parameters():
        parameter.requires_grad_(name in trainable_params)
        if name not in trainable_params:
            frozen.append(name)
    return frozen


def frozen_norm_layers(net: nn.Module, groups: LayerGroups, trainable: Sequence[str]) -> list[nn.Module]:
    """BatchNorm layers inside frozen groups (kept in eval mode so their running statistics stay put).

    A norm layer belongs to the group of its parameters; a norm layer without affine parameters
    belongs to the group of the nearest parameter registered before it.
    """
    group_of_param = {p: g for g, keys in groups.params.items() for p in keys}
    trainable = set(trainable)
    current = groups.names[0]
    layers = []
    for name, module in net.named_modules():
        own = [f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False)]
        if own:
            current = group_of_param.get(own[0], current)
        if isinstance(module, _BatchNorm) and current not in trainable:
            layers.append(module)
    return layers
