"""Analyses of the what-is-transferred study on trained networks (no training here).

- ``compare_pair``: two solutions of the same architecture (P-T/P-T, P-T/R-T or R-T/R-T): linear
  CKA per layer group on a fixed probe set, l2 distance of the weights per group and in total, and
  the test loss/error along the straight line between them with the barrier height. BatchNorm
  statistics are re-estimated on training data at every lambda (interpolated running statistics
  belong to neither network).
- ``criticality``: module criticality of one run between theta0 (the pretrained weights for P-T,
  the random init for R-T) and its final weights, per layer group, on training data.

The math lives in ``similarity/`` and the evaluation passes in ``callbacks/``; this file only decides
what is compared with what.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

PAIR_KINDS = ("PT-PT", "PT-RT", "RT-RT")
ARM_CODE = {"pretrained": "PT", "random": "RT"}


@dataclass
class PairResult:
    """Similarity and distance of two solutions, and the interpolation curve between them."""

    cka: dict[str, float]
    l2: dict[str, float]  # per layer group, and "total"
    interpolation: Any  # callbacks.interpolation.InterpolationResult
    extra: dict[str, Any] = field(default_factory=dict)


def layer_groups(net: nn.Module) -> dict[str, list[str]]:
    """Layer group -> parameter names, input side first (conv4: block1..block4, head).

    Uses the groups the fine-tuning modules define (``modules.finetune_modes``) so that the layers
    compared here are the ones the other studies name.
    """
    from modules.finetune_modes import conv4_groups, timm_groups
    from modules.nets.conv4 import Conv4

    groups = conv4_groups(net) if isinstance(net, Conv4) else timm_groups(net)
    return {name: list(groups.params[name]) for name in groups.names}


def criticality_modules(net: nn.Module) -> list[str]:
    """The modules whose criticality is measured, input side first.

    conv4: its layer groups (block1..block4, head). A timm model: its stem, every stage of ``blocks``
    (the paper's modules are residual stages), the final conv and the classifier; normalisation-only
    modules (bn1, bn2) are left out. For conv4 these are the groups CKA compares; for a timm model
    the CKA groups cut at ``feature_info`` points instead, which can span several stages.
    """
    from modules.nets.conv4 import Conv4

    if isinstance(net, Conv4):
        return list(layer_groups(net))
    out = []
    for name, child in net.named_children():
        stages = list(child.named_children()) if name == "blocks" else [("", child)]
        for sub, module in stages:
            if isinstance(module, nn.modules.batchnorm._BatchNorm) or not any(True for _ in module.parameters()):
                continue
            out.append(f"{name}.{sub}" if sub else name)
    return out


def with_state(template: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """A copy of ``template`` holding ``state`` (eval mode)."""
    net = copy.deepcopy(template)
    net.load_state_dict(dict(state))
    return net.eval()


def layer_cka(net_a: nn.Module, net_b: nn.Module, layers: Sequence[str], inputs: torch.Tensor,
              batch_size: int = 256) -> dict[str, float]:
    """Linear CKA (biased HSIC) between the two networks' outputs of each layer on ``inputs``."""
    from callbacks.snapshot import capture_representations
    from similarity import linear_cka

    reps_a = capture_representations(net_a, list(layers), inputs, pooling="flatten", batch_size=batch_size)
    reps_b = capture_representations(net_b, list(layers), inputs, pooling="flatten", batch_size=batch_size)
    return {layer: float(linear_cka(reps_a[layer], reps_b[layer])) for layer in layers}


def weight_distances(state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor],
                     groups: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """l2 distance of the weights of each layer group and of all floating tensors ("total")."""
    from similarity import weight_l2_distance

    out = {name: float(weight_l2_distance(state_a, state_b, keys=keys)) for name, keys in groups.items()}
    out["total"] = float(weight_l2_distance(state_a, state_b))
    return out


def compare_pair(template: nn.Module, state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor],
                 probe: torch.Tensor, test_loader: Iterable, bn_loader: Iterable | None, *,
                 lambdas: int | Sequence[float] = 11, bn_batches: int | None = None,
                 max_batches: int | None = None) -> PairResult:
    """CKA per layer, weight distances and the interpolation curve (BN recomputed at each lambda
    when ``bn_loader`` is given) between the solutions ``state_a`` and ``state_b`` of ``template``."""
    from callbacks.interpolation import interpolation_curve

    groups = layer_groups(template)
    net_a, net_b = with_state(template, state_a), with_state(template, state_b)
    cka = layer_cka(net_a, net_b, list(groups), probe)
    l2 = weight_distances(state_a, state_b, groups)
    curve = interpolation_curve(template, dict(state_a), dict(state_b), test_loader, lambdas,
                                bn_loader=bn_loader, bn_batches=bn_batches, max_batches=max_batches)
    return PairResult(cka=cka, l2=l2, interpolation=curve)


def pairs_of(members: Mapping[str, Mapping[int, str]]) -> list[tuple[str, int, int, str, str]]:
    """The pairs to compare from run keys by arm and seed: (kind, seed_a, seed_b, key_a, key_b).

    For every two seeds i < j (seeds both arms have): P-T_i/P-T_j, R-T_i/R-T_j and P-T_i/R-T_j, so
    each pair kind has the same number of pairs and pairs of one (i, j) can be compared directly.
    """
    pt, rt = members.get("pretrained", {}), members.get("random", {})
    seeds = sorted(set(pt) & set(rt))
    out = []
    for i, j in itertools.combinations(seeds, 2):
        out.append(("PT-PT", i, j, pt[i], pt[j]))
        out.append(("PT-RT", i, j, pt[i], rt[j]))
        out.append(("RT-RT", i, j, rt[i], rt[j]))
    return out


def criticality(template: nn.Module, theta0: Mapping[str, torch.Tensor], thetaf: Mapping[str, torch.Tensor],
                train_loader: Iterable, options: Mapping[str, Any], seed: int = 0,
                max_batches: int | None = None):
    """Module criticality of each of ``criticality_modules(template)`` between ``theta0`` and ``thetaf``.

    ``options``: alphas, sigmas, epsilon, noise ("absolute"/"relative"), draws, criterion ("error"/"loss")
    as in ``callbacks.criticality.module_criticality``.
    """
    from callbacks.criticality import module_criticality

    net = with_state(template, thetaf)
    return module_criticality(net, dict(theta0), dict(thetaf), train_loader, criticality_modules(template),
                              alphas=options["alphas"], sigmas=options["sigmas"],
                              epsilon=float(options["epsilon"]), noise=options["noise"],
                              draws=int(options["draws"]), seed=seed, criterion=options["criterion"],
                              max_batches=max_batches)
