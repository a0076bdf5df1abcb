"""The fine-tuning study's protocol: its claims with the paper's numbers, thresholds and margins with
their reasons, and the typed check of every config value the study reads (run once, in ``plan()``,
before any training). The protocol in words: docs/protocols/finetune.md.

Paper: Goerttler & Obermayer, "Similarity of pre-trained and fine-tuned representations" (arXiv
2207.09225), conv4 and ResNet-18, linear CKA on 500 fixed examples against the network at the start of
fine-tuning and against a fresh random network.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from benchmarks.core.config import as_bool, as_choice, as_float, as_int, as_list, check, lookup, seeds
from benchmarks.core.errors import UserError, did_you_mean, unknown_name
from benchmarks.core.findings import Claim

STAGES = ("pretrain", "finetune")
DATASETS = ("fashion_mnist", "digits", "cifar10", "svhn")
FULLSCALE = ("cifar10", "svhn")  # read from the data root (datamodules/fullscale.py layout)
NUM_DATASET_CLASSES = 10  # every dataset above has classes 0..9
CONV4_GROUPS = ("block1", "block2", "block3", "block4", "head")
OPTIMIZERS = ("adam", "adamw", "sgd")  # modules/classification.py
SCHEDULERS = ("none", "cosine")

PAPER = "Goerttler & Obermayer 2022 (arXiv 2207.09225)"
UNIT = "pretraining seed (one pretrained network and its fine-tuning runs)"

# ------------------------------------------------------------------ thresholds and margins, with reasons
NEAR_ONE = 0.9
NEAR_ONE_REASON = ("'near 1' is read as at least 0.9: the paper's conv4 gives about 0.99 / 0.97 / 0.92 for the "
                   "first three blocks, so 0.9 lies just below the least similar of its early blocks")
COLLAPSE_MARGIN = 0.0
COLLAPSE_REASON = ("any drop of the top layers below the reference target counts: small probe sets inflate CKA "
                   "everywhere, so the collapse is read relative to the reference problem, not as the paper's raw "
                   "0.02-0.06")
EQUIVALENCE_MARGIN = 0.1
EQUIVALENCE_REASON = ("0.1 of CKA is a tenth of its range and about the seed-to-seed spread of the top layers in "
                      "the tiny profile; it is far smaller than the collapse the paper reports (from about 0.9 to "
                      "0.02-0.06), so a difference inside it cannot be a collapse")
MIN_NOISE_LEVELS = 3  # the noise trend needs at least three label-noise degrees of the reference task
HEAD_POLICY_FOR_PERMUTED = "keep"
REINIT_PERMUTED_REASON = ("with head_policy reinit the fresh random head is exchangeable across classes, so permuting "
                          "the target labels changes nothing in distribution: the outcome is fixed by construction "
                          "(equivalence up to noise) and is not tested; run with finetune.head_policy=keep, as the "
                          "paper's code does (it loads the whole source network, head included)")

# ------------------------------------------------------------------------------------------- claims
DEPTH_TREND = Claim(
    "depth_trend", "Similarity to the start network falls with depth (full fine-tuning, mean over targets)",
    PAPER, "conv4 first blocks about 0.99 / 0.97 / 0.92, head about 0.02-0.06 on cross-domain or random labels")
EARLY_NEAR_ONE = Claim(
    "early_near_one", f"Early layers stay near 1: the first layer's similarity to start exceeds {NEAR_ONE:g} "
    "(full fine-tuning, mean over targets)", PAPER, "conv4 block1 about 0.99", margin=NEAR_ONE,
    margin_reason=NEAR_ONE_REASON)
TOP_COLLAPSE = Claim(
    "top_collapse", "The last block and head collapse for every collapse target (cross-domain, random labels) "
    "relative to the reference target (full fine-tuning)", PAPER,
    "head about 0.02-0.06 on cross-domain or random labels", margin=COLLAPSE_MARGIN, margin_reason=COLLAPSE_REASON)
UNLEARNED_WITH_NOISE = Claim(
    "unlearned_with_noise", "Pre-trained structure is unlearned if not usable: top-layer similarity to start "
    "falls as label noise grows (full fine-tuning)", PAPER)
PERMUTED_KEPT = Claim(
    "permuted_kept", "Usable structure is kept: with the source head kept, permuted labels leave the top layers as "
    "similar to start as the reference target (full fine-tuning)", PAPER, margin=EQUIVALENCE_MARGIN,
    margin_reason=EQUIVALENCE_REASON)
GAP_GROWS = Claim(
    "gap_grows_with_shift", "The full vs head-only accuracy gap grows with domain shift (along findings.shift_order)",
    PAPER)
LOWER_BEATS_HEAD = Claim(
    "lower_beats_head", "Changing only the lower layers (and the head) beats head-only fine-tuning on the most "
    "shifted target (test accuracy)", PAPER)
CLAIMS = (DEPTH_TREND, EARLY_NEAR_ONE, TOP_COLLAPSE, UNLEARNED_WITH_NOISE, PERMUTED_KEPT, GAP_GROWS,
          LOWER_BEATS_HEAD)


# ------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class Settings:
    """The validated values the plan and the findings use (the run configs keep the profile's values)."""

    seeds: list[int]
    modes: list[str]
    targets: list[str]  # the planned targets, in order
    specs: dict[str, dict]  # every defined target: {dataset, classes, labels}
    measures: list[str]
    reference: str
    collapse_targets: list[str]
    shift_order: list[str]
    head_policy: str
    lower_layers: int

    @property
    def measure(self) -> str:
        """The measure the findings use (the first listed)."""
        return self.measures[0]


def _name_in(mapping: Mapping[str, Any], what: str):
    def item(key: str, value: Any) -> str:
        if not isinstance(value, str) or value not in mapping:
            raise unknown_name(f"{what} ({key})", str(value), mapping)
        return value
    return item


def _optional(cfg: dict, key: str, kind, *args: Any, **kwargs: Any) -> Any:
    value = lookup(cfg, key, None)
    return None if value is None else kind(key, value, *args, **kwargs)


def _limit_batches(key: str, value: Any) -> int | float:
    """Lightning's limit_*_batches: a whole number of batches >= 1, or a fraction in (0, 1]."""
    if isinstance(value, float) and not value.is_integer():
        return as_float(key, value, minimum=0.0, maximum=1.0, positive=True)
    return as_int(key, value, minimum=1)


def _classes(key: str, value: Any) -> list[int]:
    classes = as_list(key, value, lambda k, v: as_int(k, v, minimum=0, maximum=NUM_DATASET_CLASSES - 1),
                      min_length=2)
    if len(set(classes)) != len(classes):
        raise UserError(f"{key}={classes} repeats a class", f"list each class of {key} once")
    return classes


def _label_spec(key: str, value: Any) -> str:
    from datamodules.label_transforms import parse_label_spec

    try:
        parse_label_spec(value)
    except ValueError as err:
        raise UserError(f"{key}={value!r}: {str(err).split(' Fix: ')[0]}",
                        "use clean, permuted, random or noise-p with p in [0, 1], e.g. noise-0.25") from None
    return str(value)


def _task(spec: Any, key: str) -> dict:
    """A task spec {dataset, classes, labels} (target names may hold dots, so no dotted lookup here)."""
    if not isinstance(spec, Mapping) or "dataset" not in spec or "classes" not in spec:
        raise UserError(f"{key}={spec!r} is not a task", f"write {key} as {{dataset: ..., classes: [...]}}")
    return {"dataset": as_choice(f"{key}.dataset", spec["dataset"], DATASETS),
            "classes": _classes(f"{key}.classes", spec["classes"]),
            "labels": _label_spec(f"{key}.labels", spec.get("labels", "clean"))}


def _training(cfg: dict, section: str) -> None:
    """The training values shared by ``source`` and ``finetune``."""
    for name in ("n_train", "n_val", "n_test", "epochs", "batch_size"):
        check(cfg, f"{section}.{name}", as_int, minimum=1)
    check(cfg, f"{section}.lr", as_float, positive=True)
    check(cfg, f"{section}.optimizer", as_choice, OPTIMIZERS)
    _optional(cfg, f"{section}.weight_decay", as_float, minimum=0.0)
    _optional(cfg, f"{section}.scheduler", as_choice, SCHEDULERS)
    _optional(cfg, f"{section}.limit_batches", _limit_batches)


def _model(cfg: dict) -> str:
    backbone = check(cfg, "model.backbone", lambda k, v: v if isinstance(v, str) and v else _not_name(k, v))
    check(cfg, "model.in_channels", as_int, minimum=1)
    check(cfg, "model.image_size", as_int, minimum=8)
    _optional(cfg, "model.hidden", as_int, minimum=1)
    _optional(cfg, "model.pretrained", as_bool)
    if backbone != "conv4":
        import timm

        if not timm.is_model(backbone):
            raise UserError(f'model.backbone="{backbone}" is neither conv4 nor a timm model.'
                            f"{did_you_mean(backbone, ['conv4', *timm.list_models()])}",
                            "use conv4 or a name from timm.list_models(), e.g. --set model.backbone=resnet18")
    return backbone


def _not_name(key: str, value: Any) -> str:
    raise UserError(f"{key}={value!r} is not a model name", f"use conv4 or a timm model name, e.g. --set {key}=conv4")


def _similarity(cfg: dict) -> list[str]:
    from analysis.representations import POOLINGS
    from similarity import MEASURES

    measures = check(cfg, "similarity.measures", as_list, _name_in(MEASURES, "similarity measure"))
    check(cfg, "similarity.probe_size", as_int, minimum=2)
    check(cfg, "similarity.probe_seed", as_int, minimum=0)
    pooling = lookup(cfg, "similarity.pooling", "flatten")
    if isinstance(pooling, Mapping):
        for pattern, how in pooling.items():
            as_choice(f"similarity.pooling.{pattern}", how, POOLINGS)
    else:
        as_choice("similarity.pooling", pooling, POOLINGS)
    return measures


def validate(cfg: dict) -> Settings:
    """Check every value the study reads; raise UserError (key, bad value, fix) on the first bad one."""
    from modules.finetune_modes import FINETUNE_MODES, HEAD_POLICIES

    run_seeds = seeds(cfg)
    backbone = _model(cfg)
    source = _task(lookup(cfg, "source"), "source")
    check(cfg, "source.split_seed", as_int, minimum=0)
    _training(cfg, "source")
    targets_cfg = lookup(cfg, "targets")
    if not isinstance(targets_cfg, Mapping) or not targets_cfg:
        raise UserError(f"targets={targets_cfg!r} defines no target",
                        "define targets as name: {dataset: ..., classes: [...], labels: ...}")
    specs = {name: _task(spec, f"targets.{name}") for name, spec in targets_cfg.items()}
    _training(cfg, "finetune")
    modes = check(cfg, "finetune.modes", as_list, lambda k, v: as_choice(k, v, FINETUNE_MODES))
    planned = check(cfg, "finetune.targets", as_list, _name_in(specs, "target (not under targets:)"))
    for key, values in (("finetune.modes", modes), ("finetune.targets", planned)):
        if len(set(values)) != len(values):
            raise UserError(f"{key}={values} repeats an entry", f"list each entry of {key} once")
    head_policy = check(cfg, "finetune.head_policy", as_choice, HEAD_POLICIES)
    if head_policy == "keep":
        for name in planned:
            if len(specs[name]["classes"]) != len(source["classes"]):
                raise UserError(f"finetune.head_policy=keep, but target {name} has {len(specs[name]['classes'])} "
                                f"classes and the source {len(source['classes'])}",
                                "use head_policy=reinit, or targets with as many classes as the source")
    groups = layer_groups(cfg)
    lower = _optional(cfg, "finetune.lower_layers", as_int, minimum=1)
    if lower is not None and lower > len(groups) - 1:
        raise UserError(f"finetune.lower_layers={lower} exceeds {backbone}'s {len(groups) - 1} body groups "
                        f"({', '.join(groups[:-1])})", f"use 1..{len(groups) - 1}")
    trainable = _optional(cfg, "finetune.trainable", as_list, lambda k, v: as_choice(k, v, groups))
    if "groups" in modes and not trainable:
        raise UserError("finetune.modes has groups but finetune.trainable is empty",
                        "list the layer groups to train, e.g. --set finetune.trainable=[block1,head]")
    from_epoch = lookup(cfg, "finetune.from_epoch", "last")
    if isinstance(from_epoch, str) and from_epoch != "last":
        raise UserError(f"finetune.from_epoch={from_epoch!r} is neither last nor an epoch number",
                        "use last or a pretraining epoch 0..source.epochs, e.g. --set finetune.from_epoch=last")
    if from_epoch not in (None, "last"):
        as_int("finetune.from_epoch", from_epoch, minimum=0, maximum=check(cfg, "source.epochs", as_int))
    measures = _similarity(cfg)
    reference = check(cfg, "findings.reference_target", _name_in(specs, "reference target"))
    collapse = check(cfg, "findings.collapse_targets", as_list, _name_in(specs, "collapse target"))
    shift = check(cfg, "findings.shift_order", as_list, _name_in(specs, "shift-order target"), min_length=2)
    return Settings(seeds=run_seeds, modes=modes, targets=planned, specs=specs, measures=measures,
                    reference=reference, collapse_targets=collapse, shift_order=shift,
                    head_policy=head_policy, lower_layers=lower if lower is not None else (len(groups) - 1) // 2)


def layer_groups(cfg: dict) -> tuple[str, ...]:
    """The model's layer groups, input side first, head last: conv4's blocks, or a timm model's groups cut at
    its ``feature_info`` points (found by name, modules/finetune_modes.py), built on the meta device (no
    memory, no weights) so a model that cannot be cut into groups stops the plan before any training."""
    backbone = cfg["model"]["backbone"]
    if backbone == "conv4":
        return CONV4_GROUPS
    import torch

    from modules.classification import build_backbone
    from modules.finetune_modes import FinetuneConfigError

    try:
        with torch.device("meta"):
            _, groups = build_backbone(backbone, 2, int(cfg["model"]["in_channels"]),
                                       int(cfg["model"]["image_size"]))
    except FinetuneConfigError as err:
        raise UserError(f"model.backbone={backbone}: {err.problem}", err.fix) from None
    return groups.names
