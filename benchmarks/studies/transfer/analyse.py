"""Analyses of the what-is-transferred study on trained networks (no training here).

- ``compare_pair``: two solutions of the same architecture (P-T/P-T, P-T/R-T or R-T/R-T): linear
  CKA per layer group on a fixed probe set, l2 distance of the weights per group and in total, and
  the test loss/error along the straight line between them with the barrier height. BatchNorm
  statistics are re-estimated on training data at every lambda (interpolated running statistics
  belong to neither network).
- ``criticality``: module criticality of one run between theta0 (the pretrained weights for P-T,
  the random init for R-T) and its final weights, per layer group, on training data.
- ``run_pairs`` / ``run_criticality``: the ``pairs`` and ``criticality`` stages, which load the
  finished train runs' weights and return the measurements as the run's metrics (the report and the
  findings read those metrics; no training here).

The math lives in ``similarity/`` and the evaluation passes in ``callbacks/``; this file only decides
what is compared with what.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from benchmarks.core.study import Run, RunContext
from benchmarks.studies.transfer.protocol import PAIR_KINDS, intact


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
    from analysis.representations import capture_representations
    from similarity import compare_representations

    reps_a = capture_representations(net_a, list(layers), inputs, pooling="flatten", batch_size=batch_size)
    reps_b = capture_representations(net_b, list(layers), inputs, pooling="flatten", batch_size=batch_size)
    return {layer: v["linear_cka"] for layer, v in compare_representations(reps_a, reps_b, "linear_cka").items()}


def weight_distances(state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor],
                     groups: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """l2 distance of the learned weights of each layer group and of all of them ("total"); the BatchNorm
    running statistics (buffers, not weights) are reported apart ("buffers")."""
    from similarity import weight_l2_distance

    out = {name: float(weight_l2_distance(state_a, state_b, keys=keys)) for name, keys in groups.items()}
    weights = [k for keys in groups.values() for k in keys]
    out["total"] = float(weight_l2_distance(state_a, state_b, keys=weights))
    buffers = [k for k, v in state_a.items() if k not in set(weights) and v.is_floating_point()]
    out["buffers"] = float(weight_l2_distance(state_a, state_b, keys=buffers)) if buffers else 0.0
    return out


def compare_pair(template: nn.Module, state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor],
                 probe: torch.Tensor, test_loader: Iterable, bn_loader: Iterable | None, *,
                 lambdas: int | Sequence[float] = 11, bn_batches: int | None = None,
                 max_batches: int | None = None) -> PairResult:
    """CKA per layer, weight distances and the interpolation curve (BN recomputed at each lambda
    when ``bn_loader`` is given) between the solutions ``state_a`` and ``state_b`` of ``template``."""
    from analysis.interpolation import interpolation_curve

    groups = layer_groups(template)
    net_a, net_b = with_state(template, state_a), with_state(template, state_b)
    cka = layer_cka(net_a, net_b, list(groups), probe)
    l2 = weight_distances(state_a, state_b, groups)
    curve = interpolation_curve(template, dict(state_a), dict(state_b), test_loader, lambdas,
                                bn_loader=bn_loader, bn_batches=bn_batches, max_batches=max_batches)
    return PairResult(cka=cka, l2=l2, interpolation=curve)


def pairs_of(members: Mapping[str, Mapping[int, Any]]) -> list[tuple[str, int, int, Any, Any]]:
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
    """Module criticality (Chatterji et al.) of each of ``criticality_modules(template)`` between ``theta0``
    and ``thetaf``, absolute noise, BatchNorm statistics re-estimated on ``train_loader`` at every point.

    ``options`` (the profile's ``analysis.criticality``): alphas, sigma_min/sigma_max/sigma_points (a log-spaced
    sigma grid), epsilon, bound, draws, criterion, search, bn_batches (see ``analysis.criticality``).
    """
    from analysis.criticality import module_criticality, sigma_grid

    net = with_state(template, thetaf)
    sigmas = sigma_grid(float(options["sigma_min"]), float(options["sigma_max"]), int(options["sigma_points"]))
    return module_criticality(net, dict(theta0), dict(thetaf), train_loader, criticality_modules(template),
                              alphas=options["alphas"], sigmas=sigmas, epsilon=float(options["epsilon"]),
                              bound=options["bound"], draws=int(options["draws"]), seed=seed,
                              criterion=options["criterion"], search=options["search"], bn_loader=train_loader,
                              bn_batches=options.get("bn_batches"), max_batches=max_batches)


# ============================================================================================ the analysis stages
def _member(ctx: RunContext, key: str) -> tuple[dict, Path]:
    run_dir = ctx.output_of(key)
    return yaml.safe_load((run_dir / "run.yaml").read_text())["params"], run_dir


def chosen_members(ctx: RunContext, keys: Sequence[str]) -> tuple[dict[str, dict[int, Path]], dict[str, float]]:
    """The finished train runs ``keys`` reduced to each arm's chosen learning rate: (arm -> seed -> run
    directory, arm -> rate). The rate is chosen on mean final validation accuracy (``protocol.choose_lr``)."""
    from benchmarks.studies.transfer.protocol import choose_lr

    found: dict[str, dict[float, dict[int, tuple[Path, float]]]] = {}
    for key in keys:
        params, run_dir = _member(ctx, key)
        val = float(json.loads((run_dir / "metrics.json").read_text())["val_acc"])
        found.setdefault(params["init"], {}).setdefault(float(params["lr"]), {})[int(params["seed"])] = (run_dir, val)
    members, rates = {}, {}
    for arm, by_lr in found.items():
        rates[arm] = choose_lr({lr: [v for _, v in seeds.values()] for lr, seeds in by_lr.items()})
        members[arm] = {seed: run_dir for seed, (run_dir, _) in by_lr[rates[arm]].items()}
    return members, rates


def _intact_data(run: Run):
    """The intact target task: the datamodule, training data in a fixed order, test data."""
    from benchmarks.studies.transfer.train import seeded_loader, target_datamodule

    src, target = run.config["source"], run.config["target"]
    dm = target_datamodule(target, src, intact(src), 0)
    dm.setup()
    train = seeded_loader(dm.dataset("train"), int(src["train"]["batch_size"]), None)
    test = seeded_loader(dm.dataset("test"), 256, None)
    return dm, train, test


def run_pairs(run: Run, ctx: RunContext) -> dict[str, float]:
    """CKA per layer, l2 distances and interpolation barriers for every pair of intact runs."""
    from benchmarks.studies.transfer.figures import cka_figure
    from benchmarks.studies.transfer.train import load_net
    from callbacks.interpolation import report_interpolation
    from callbacks.probe import select_probe

    analysis = run.config["analysis"]
    dm, train, test = _intact_data(run)
    probe = select_probe(dm.dataset("test"), int(analysis["probe_size"]), seed=0).inputs
    members, rates = chosen_members(ctx, run.needs)
    first = next(iter(next(iter(members.values())).values()))
    template = load_net(run.config["source"], dm.num_classes, first / "final.pt")
    outputs = ctx.outputs()
    limit = run.config["target"].get("limit_batches")
    metrics: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    curves: dict[str, list] = {kind: [] for kind in PAIR_KINDS}
    layers: list[str] = []
    for arm, rate in rates.items():
        metrics[f"lr/{arm}"] = rate
    for kind, i, j, dir_a, dir_b in pairs_of(members):
        state_a = torch.load(dir_a / "final.pt", weights_only=True)
        state_b = torch.load(dir_b / "final.pt", weights_only=True)
        result = compare_pair(template, state_a, state_b, probe, test, train, lambdas=int(analysis["lambdas"]),
                              bn_batches=analysis.get("bn_batches"), max_batches=limit)
        pair = f"{i}-{j}"
        layers = list(result.cka)
        report_interpolation(outputs, result.interpolation, name=f"interp/{kind}/{pair}")
        curve = result.interpolation
        curves[kind].append(curve)
        metrics[f"loss_barrier/{kind}/{pair}"] = float(curve.loss_barrier)
        metrics[f"error_barrier/{kind}/{pair}"] = float(curve.error_barrier)
        metrics[f"min_acc/{kind}/{pair}"] = 1.0 - max(curve.error)
        metrics[f"end_acc/{kind}/{pair}"] = 1.0 - 0.5 * (curve.error[0] + curve.error[-1])
        for index, layer in enumerate(layers):
            metrics[f"cka/{kind}/{pair}/{layer}"] = result.cka[layer]
            metrics[f"l2/{kind}/{pair}/{layer}"] = result.l2[layer]
            rows.append({"kind": kind, "pair": pair, "layer": layer, "layer_index": index,
                         "cka": result.cka[layer], "l2": result.l2[layer]})
        metrics[f"l2/{kind}/{pair}/total"] = result.l2["total"]
        metrics[f"l2_buffers/{kind}/{pair}"] = result.l2["buffers"]
    # per-layer curves against the layer index, one line per pair kind (mean over pairs)
    outputs.define_curve("cka", "cka/layer_index", [f"cka/{k}" for k in PAIR_KINDS])
    outputs.define_curve("l2", "l2/layer_index", [f"l2/{k}" for k in PAIR_KINDS])
    for index, layer in enumerate(layers):
        row: dict[str, float] = {"cka/layer_index": index, "l2/layer_index": index}
        for kind in PAIR_KINDS:
            values = [r for r in rows if r["kind"] == kind and r["layer"] == layer]
            if values:
                row[f"cka/{kind}"] = sum(r["cka"] for r in values) / len(values)
                row[f"l2/{kind}"] = sum(r["l2"] for r in values) / len(values)
        outputs.log(row)
    log_mean_curves(outputs, curves)
    outputs.table("pairs/per_layer", rows)
    outputs.csv("pairs.csv", rows)
    outputs.figure("cka.png", cka_figure(rows, layers), wandb_key="cka/bars")
    outputs.summary({k: v for k, v in metrics.items() if "barrier" in k or "/total" in k})
    outputs.json("pairs.json", {"bn_recomputed": True, "lambdas": int(analysis["lambdas"]), "lr": rates,
                                "rows": rows})
    return metrics


def log_mean_curves(outputs, curves: dict[str, list]) -> None:
    """Per pair kind, the interpolation curve averaged over its pairs, against its own lambda axis
    (``interp_mean/<kind>/lambda``): fixed keys that a dashboard can name, each axis increasing in the run."""
    for kind, members in curves.items():
        if not members:
            continue
        prefix = f"interp_mean/{kind}"
        outputs.define_curve(prefix, f"{prefix}/lambda", [f"{prefix}/loss", f"{prefix}/error"])
        for index, lam in enumerate(members[0].lambdas):
            outputs.log({f"{prefix}/lambda": float(lam),
                         f"{prefix}/loss": sum(c.loss[index] for c in members) / len(members),
                         f"{prefix}/error": sum(c.error[index] for c in members) / len(members)})


def run_criticality(run: Run, ctx: RunContext) -> dict[str, float]:
    """Module criticality of one intact run at its arm's chosen rate (theta0 = its init.pt, thetaf = its final.pt)."""
    from benchmarks.studies.transfer.train import load_net
    from callbacks.criticality import report_criticality

    dm, train, _test = _intact_data(run)
    members, rates = chosen_members(ctx, run.needs)
    arm = run.params["init"]
    run_dir = members[arm][int(run.params["seed"])]
    template = load_net(run.config["source"], dm.num_classes, run_dir / "final.pt")
    theta0 = torch.load(run_dir / "init.pt", weights_only=True)
    thetaf = torch.load(run_dir / "final.pt", weights_only=True)
    options = run.config["criticality"]
    result = criticality(template, theta0, thetaf, train, options, seed=ctx.seed,
                         max_batches=run.config["target"].get("limit_batches"))
    result.extra["theta0"] = "pretrained weights + fresh head" if run.params["init"] == "pretrained" else "random init"
    report_criticality(ctx.outputs(), result, name="crit")
    metrics: dict[str, float] = {"reference_error": float(result.reference_error), "lr": float(rates[arm])}
    for depth, (name, module) in enumerate(result.modules.items()):
        metrics[f"depth/{name}"] = float(depth)
        metrics[f"criticality/{name}"] = float(module.criticality)
        metrics[f"distance/{name}"] = math.sqrt(module.distance_sq)
    return metrics
