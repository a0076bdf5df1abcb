"""Protocol of study 4, what is being transferred (Neyshabur, Sedghi & Zhang, NeurIPS 2020).

Fixed before any run: the stages, the arms, the claims with the paper's statements and the margins
with their reasons, the unit of replication, and the typed checks of every config value the study
reads (``check_config``, called once by the plan, before any training). The protocol in words:
docs/protocols/transfer.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks.core.config import as_bool, as_choice, as_float, as_int, as_list, check, lookup, seeds
from benchmarks.core.errors import UserError
from benchmarks.core.findings import Claim

PROTOCOL = "docs/protocols/transfer.md"
STAGES = ("pretrain", "train", "pairs", "criticality", "checkpoint")
ARMS = ("pretrained", "random")  # P-T: source weights + fresh head; R-T: the same network from a random init
ARM_LABEL = {"pretrained": "P-T", "random": "R-T"}
PAIR_KINDS = ("PT-PT", "PT-RT", "RT-RT")
BACKBONE_KINDS = ("conv4", "imagenet")
PRETRAIN_DATASETS = ("fashion_mnist", "glyphs")
OPTIMIZERS = ("adam", "adamw", "sgd")  # modules.classification.OPTIMIZERS
SCHEDULERS = ("none", "cosine")
ALPHABET_SPLITS = ("train", "val", "test", "all")

UNIT = "seed (independent training run)"
PAIR_UNIT = "seed (mean over the seed pairs it belongs to)"

# The performance barrier the findings read: on test error (an accuracy drop), as the paper's figures.
BARRIER_METRIC = "error"
# "No barrier between P-T solutions" as an equivalence: |mean P-T/P-T barrier| < BARRIER_MARGIN.
BARRIER_MARGIN = 0.035
BARRIER_MARGIN_REASON = (
    "not from the paper, which shows flat P-T/P-T curves without a threshold. 0.035 test error is two binomial "
    "standard errors of a test accuracy near 0.9 on the tiny profile's 280 test images (sqrt(0.9 x 0.1 / 280) = "
    "0.018): a dip smaller than the sampling noise of one accuracy on the test set is not a barrier. Fixed before "
    "any run; the paper's relative statement is barrier_pt_below_rt, which needs no margin")
CHECKPOINT_MARGIN = 0.01
CHECKPOINT_MARGIN_REASON = (
    "not from the paper, which shows downstream accuracy against the checkpoint as curves: an earlier checkpoint "
    "'matches' the last one when it is at most 1 accuracy point worse (non-inferiority), fixed before any run")

PAPER = "Neyshabur, Sedghi & Zhang, NeurIPS 2020"

CLAIMS = (
    Claim("pt_beats_rt_near", "on intact images P-T reaches a higher test accuracy than R-T when the source is "
          "near the target (the premise: something useful is transferred)",
          f"{PAPER}, 'Role of feature reuse' (P-T beats R-T on every DomainNet target, intact images)"),
    Claim("gain_larger_near", "P-T's accuracy gain over R-T on intact images is larger for the near source than for "
          "the far one", f"{PAPER}, 'Role of feature reuse' (the gain is largest on real, smallest on quickdraw)"),
    Claim("advantage_shrinks", "P-T's final-accuracy gain over R-T does not grow as the blocks get smaller (a "
          "positive trend of the gain on block size)", f"{PAPER}, 'Role of feature reuse' (accuracy vs block size)"),
    Claim("pt_trains_faster", "P-T trains faster than R-T even at the smallest block size (pixel shuffle), where "
          "feature reuse is gone", f"{PAPER}, 'Role of feature reuse' (training speed with shuffled blocks)"),
    Claim("cka_pt_above_rt", "two P-T runs are more similar (mean linear CKA over layers) than two R-T runs",
          f"{PAPER}, 'Opening up the model' (feature similarity)"),
    Claim("l2_pt_below_rt", "two P-T runs are closer in weight space (l2 of all weights, BatchNorm running "
          "statistics excluded) than two R-T runs", f"{PAPER}, 'Opening up the model' (distance in parameter space)"),
    Claim("barrier_pt_below_rt", f"the test {BARRIER_METRIC} barrier between two P-T solutions is smaller than "
          "between two R-T solutions (paired by seed pair)",
          f"{PAPER}, 'Opening up the model' (performance barriers; the paper's relative statement)"),
    Claim("no_barrier_pt", f"no performance barrier between two P-T solutions (test {BARRIER_METRIC} barrier "
          f"equivalent to 0 within ±{BARRIER_MARGIN:g})", f"{PAPER}, 'Opening up the model' (performance barriers)",
          margin=BARRIER_MARGIN, margin_reason=BARRIER_MARGIN_REASON),
    Claim("criticality_rises_with_depth", "lower layers are less critical than higher ones (Spearman rho of "
          "module criticality on depth above 0)", f"{PAPER}, 'Module criticality'"),
    Claim("earlier_checkpoint_matches", "the best downstream result need not come from the last pretraining "
          f"checkpoint (the earlier checkpoint best on validation, random init excluded, is within "
          f"{CHECKPOINT_MARGIN:g} test accuracy of the last)",
          f"{PAPER}, 'Which pre-trained checkpoint is most useful for transfer learning?'", margin=CHECKPOINT_MARGIN,
          margin_reason=CHECKPOINT_MARGIN_REASON),
)


# ============================================================================================ config
def source_config(cfg: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The resolved settings of one source (model, pretraining, block sizes, downstream training)."""
    return dict(cfg["sources"][name])


def source_seeds(cfg: Mapping[str, Any], name: str) -> list[int]:
    """The seeds of a source's downstream runs: its own list, or the study's seeds when null."""
    if cfg["sources"][name].get("seeds") is None:
        return [int(s) for s in cfg["seeds"]]
    return [int(s) for s in cfg["sources"][name]["seeds"]]


MODEL_KEYS = ("kind", "backbone", "in_channels", "image_size", "hidden", "allow_download")


def scratch_config(src: Mapping[str, Any]) -> dict[str, Any]:
    """What an R-T run of a source depends on: the architecture and the downstream training, not the source."""
    return {k: src[k] for k in (*MODEL_KEYS, "train") if k in src}


def rt_owner(cfg: Mapping[str, Any], name: str) -> str:
    """The source under whose name the R-T runs of ``name`` are kept: the first used source with the same
    architecture and downstream training (R-T never sees the source, so such sources share their R-T runs)."""
    mine = scratch_config(cfg["sources"][name])
    for other in dict.fromkeys(cfg["use_sources"]):
        if scratch_config(cfg["sources"][other]) == mine:
            return other
    return name


def intact(src: Mapping[str, Any]) -> int:
    """The block size that leaves the image intact (its side)."""
    return int(src["image_size"])


def _optional(cfg: dict, key: str, kind, *args: Any, **kwargs: Any) -> Any:
    """``kind(key, value)`` unless the value is null (or absent): then None."""
    value = lookup(cfg, key, None)
    return None if value is None else kind(key, value, *args, **kwargs)


def _optim(cfg: dict, key: str, with_lr: bool = True) -> None:
    check(cfg, f"{key}.optimizer", as_choice, OPTIMIZERS)
    if with_lr:
        check(cfg, f"{key}.lr", as_float, positive=True)
    for name in ("momentum", "weight_decay"):
        _optional(cfg, f"{key}.{name}", as_float, minimum=0.0)
    scheduler = lookup(cfg, f"{key}.scheduler", None)
    if scheduler is not None:
        as_choice(f"{key}.scheduler", scheduler, SCHEDULERS)


def choose_lr(val_acc: Mapping[float, Sequence[float]]) -> float:
    """The protocol's learning-rate choice for one arm: the rate with the highest mean final validation
    accuracy over its seeds (ties: the smaller rate). Test accuracy never enters the choice."""
    means = {float(lr): sum(v) / len(v) for lr, v in val_acc.items() if v}
    if not means:
        raise ValueError("no finished runs to choose a learning rate from")
    return max(sorted(means), key=lambda lr: (means[lr], -lr))


def _check_source(cfg: dict, name: str) -> None:
    key = f"sources.{name}"
    kind = check(cfg, f"{key}.kind", as_choice, BACKBONE_KINDS)
    if not isinstance(lookup(cfg, f"{key}.backbone"), str):
        raise UserError(f"{key}.backbone={lookup(cfg, f'{key}.backbone')!r} is not a network name",
                        f"set {key}.backbone to conv4 or a timm model name")
    check(cfg, f"{key}.in_channels", as_int, minimum=1)
    size = check(cfg, f"{key}.image_size", as_int, minimum=1)
    _optional(cfg, f"{key}.hidden", as_int, minimum=1)
    _optional(cfg, f"{key}.allow_download", as_bool)
    blocks = check(cfg, f"{key}.block_sizes", as_list, lambda k, v: as_int(k, v, minimum=1))
    bad = [b for b in blocks if size % b]
    if bad:
        divisors = [d for d in range(1, size + 1) if size % d == 0]
        raise UserError(f"{key}.block_sizes={blocks}: {bad} do not tile images of side {size}",
                        f"use divisors of {size}: {divisors}")
    if size not in blocks:
        raise UserError(f"{key}.block_sizes={blocks} lacks {size} (the intact image), which the similarity, "
                        "barrier, criticality and checkpoint analyses use", f"add {size} to {key}.block_sizes")
    own = lookup(cfg, f"{key}.seeds", None)
    run_seeds = seeds(cfg, f"{key}.seeds") if own is not None else seeds(cfg)
    if len(run_seeds) < 2:
        raise UserError(f"source {name} has the seeds {run_seeds}: P-T vs R-T needs two independent runs per arm",
                        "list at least two seeds (three for confidence intervals)")
    if kind == "conv4":
        pre = f"{key}.pretrain"
        dataset = check(cfg, f"{pre}.dataset", as_choice, PRETRAIN_DATASETS)
        check(cfg, f"{pre}.seed", as_int, minimum=0)
        if dataset == "fashion_mnist":
            check(cfg, f"{pre}.n_train", as_int, minimum=1)
            check(cfg, f"{pre}.n_test", as_int, minimum=1)
            check(cfg, f"{pre}.val_fraction", as_float, minimum=0.0, maximum=0.5)
        else:
            split = check(cfg, f"{pre}.alphabet_split", as_choice, ("train", "val", "test"))
            if split == lookup(cfg, "target.alphabet_split", None):
                raise UserError(f"{pre}.alphabet_split={split!r} is the target's alphabet split: the source would "
                                "contain the target's characters", f"use another split for {pre}.alphabet_split")
            _optional(cfg, f"{pre}.classes", as_int, minimum=2)
            check(cfg, f"{pre}.instances_per_char", as_int, minimum=1)
            for name in ("train_per_class", "val_per_class", "test_per_class"):
                check(cfg, f"{pre}.{name}", as_int, minimum=1)
        check(cfg, f"{pre}.epochs", as_int, minimum=1)
        check(cfg, f"{pre}.batch_size", as_int, minimum=1)
        _optim(cfg, pre)
        check(cfg, f"{pre}.checkpoints", as_list, lambda k, v: as_float(k, v, minimum=0.0, maximum=1.0),
              min_length=0)
        _optional(cfg, f"{pre}.limit_batches", as_int, minimum=1)
    train = f"{key}.train"
    epochs = check(cfg, f"{train}.epochs", as_int, minimum=1)
    check(cfg, f"{train}.batch_size", as_int, minimum=1)
    check(cfg, f"{train}.speed_epochs", as_int, minimum=1, maximum=epochs)
    check(cfg, f"{train}.lrs", as_list, lambda k, v: as_float(k, v, positive=True))
    _optim(cfg, f"{train}.optim", with_lr=False)


def check_config(cfg: dict) -> None:
    """Every value the study reads, checked once before any run: a UserError naming key, value and fix."""
    seeds(cfg)
    _optional(cfg, "threads", as_int, minimum=1)
    sources = lookup(cfg, "sources")
    if not isinstance(sources, dict) or not sources:
        raise UserError(f"sources={sources!r} is not a mapping of source names to settings",
                        "start from benchmarks/configs/transfer/tiny.yaml")
    used = check(cfg, "use_sources", as_list, lambda k, v: as_choice(k, v, list(sources)))
    for name in dict.fromkeys(used):
        _check_source(cfg, name)
    order = check(cfg, "domain_distance", as_list, lambda k, v: as_choice(k, v, list(used)), min_length=0)
    if len(set(order)) != len(order):
        raise UserError(f"domain_distance={order} names a source twice", "list each source once, nearest first")
    check(cfg, "target.dataset", as_choice, ("glyphs",))
    check(cfg, "target.task_seed", as_int, minimum=0)
    check(cfg, "target.classes", as_int, minimum=2)
    check(cfg, "target.alphabet_split", as_choice, ALPHABET_SPLITS)
    for key in ("instances_per_char", "train_per_class", "val_per_class", "test_per_class"):
        check(cfg, f"target.{key}", as_int, minimum=1)
    _optional(cfg, "target.limit_batches", as_int, minimum=1)
    for group in ("analysis", "checkpoints"):
        for index, name in enumerate(check(cfg, f"{group}.sources", as_list, lambda k, v: v, min_length=0)):
            if name not in used:
                raise UserError(f'{group}.sources[{index}]={name!r} names a source that use_sources does not run',
                                f"add it to use_sources or remove it from {group}.sources")
    check(cfg, "analysis.probe_size", as_int, minimum=2)
    check(cfg, "analysis.lambdas", as_int, minimum=2)
    _optional(cfg, "analysis.bn_batches", as_int, minimum=1)
    crit = "analysis.criticality"
    check(cfg, f"{crit}.alphas", as_list, lambda k, v: as_float(k, v, minimum=0.0, maximum=1.0))
    low = check(cfg, f"{crit}.sigma_min", as_float, positive=True, maximum=1.0)
    check(cfg, f"{crit}.sigma_max", as_float, minimum=low, maximum=1.0)
    check(cfg, f"{crit}.sigma_points", as_int, minimum=2)
    check(cfg, f"{crit}.bound", as_choice, ("absolute", "relative"))
    check(cfg, f"{crit}.search", as_choice, ("grid", "bisect"))
    check(cfg, f"{crit}.epsilon", as_float, minimum=0.0)
    check(cfg, f"{crit}.draws", as_int, minimum=1)
    check(cfg, f"{crit}.criterion", as_choice, ("error", "loss"))
    _optional(cfg, f"{crit}.bn_batches", as_int, minimum=1)
    checkpoint_seeds = check(cfg, "checkpoints.seeds", as_list, lambda k, v: as_int(k, v, minimum=0))
    for name in cfg["checkpoints"]["sources"]:
        if cfg["sources"][name]["kind"] != "conv4":
            raise UserError(f"checkpoints.sources names {name}, whose weights are not pretrained here",
                            "list conv4 sources only (the ImageNet weights come without checkpoints)")
        missing = set(checkpoint_seeds) - set(source_seeds(cfg, name))
        if missing:
            raise UserError(f"checkpoints.seeds {sorted(missing)} are not seeds of source {name}",
                            "use seeds of the train stage (the last checkpoint reuses its runs)")
