"""Protocol of study 4, what is being transferred (Neyshabur, Sedghi & Zhang, NeurIPS 2020).

Fixed before any run: the stages, the arms, the claims with the paper's statements and the margins
with their reasons, the unit of replication, and the typed checks of every config value the study
reads (``check_config``, called once by the plan, before any training). The protocol in words:
docs/protocols/transfer.md.
"""

from __future__ import annotations

from collections.abc import Mapping
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
OPTIMIZERS = ("adam", "adamw", "sgd")  # modules.classification.OPTIMIZERS
SCHEDULERS = ("none", "cosine")
ALPHABET_SPLITS = ("train", "val", "test", "all")

UNIT = "seed (independent training run)"
PAIR_UNIT = "seed (mean over the seed pairs it belongs to)"

# The performance barrier the findings read: on test error (an accuracy drop), as the paper's figures.
BARRIER_METRIC = "error"
BARRIER_MARGIN = 0.05
BARRIER_MARGIN_REASON = (
    "not from the paper: it shows the P-T and R-T interpolation curves without a threshold. 0.05 test error "
    "(5 accuracy points) is the smallest drop along the path we call a barrier, fixed before any run; the "
    "paper's own, relative statement is barrier_pt_below_rt, which needs no margin")
CHECKPOINT_MARGIN = 0.01
CHECKPOINT_MARGIN_REASON = (
    "not from the paper, which shows downstream accuracy against the checkpoint as curves: an earlier checkpoint "
    "'matches' the last one when it is at most 1 accuracy point worse (non-inferiority), fixed before any run")

PAPER = "Neyshabur, Sedghi & Zhang, NeurIPS 2020"

CLAIMS = (
    Claim("pt_beats_rt_every_block", "P-T reaches a higher test accuracy than R-T at every block size",
          f"{PAPER}, 'Role of feature reuse' (accuracy vs block size)"),
    Claim("advantage_shrinks", "P-T's accuracy advantage over R-T shrinks as the blocks get smaller",
          f"{PAPER}, 'Role of feature reuse'"),
    Claim("pt_trains_faster", "P-T trains faster than R-T even at block sizes where its accuracy gain vanishes",
          f"{PAPER}, 'Role of feature reuse' (training speed)"),
    Claim("cka_pt_above_rt", "two P-T runs are more similar (mean linear CKA over layers) than two R-T runs",
          f"{PAPER}, 'Opening up the model' (feature similarity)"),
    Claim("l2_pt_below_rt", "two P-T runs are closer in weight space (l2 of all weights) than two R-T runs",
          f"{PAPER}, 'Opening up the model' (distance in parameter space)"),
    Claim("no_barrier_pt", f"no performance barrier between two P-T solutions (test {BARRIER_METRIC} barrier "
          f"below {BARRIER_MARGIN:g})", f"{PAPER}, 'Opening up the model' (performance barriers)",
          margin=BARRIER_MARGIN, margin_reason=BARRIER_MARGIN_REASON),
    Claim("barrier_rt", f"a clear performance barrier between two R-T solutions (test {BARRIER_METRIC} barrier "
          f"above {BARRIER_MARGIN:g})", f"{PAPER}, 'Opening up the model' (performance barriers)",
          margin=BARRIER_MARGIN, margin_reason=BARRIER_MARGIN_REASON),
    Claim("barrier_pt_below_rt", f"the test {BARRIER_METRIC} barrier between two P-T solutions is smaller than "
          "between two R-T solutions",
          f"{PAPER}, 'Opening up the model' (performance barriers; the paper's relative statement)"),
    Claim("criticality_rises_with_depth", "lower layers are less critical than higher ones (Spearman rho of "
          "criticality on depth above 0)", f"{PAPER}, 'Module criticality'"),
    Claim("earlier_checkpoint_matches", "the best downstream result need not come from the last pretraining "
          f"checkpoint (the best earlier one is within {CHECKPOINT_MARGIN:g} accuracy of the last)",
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


def intact(src: Mapping[str, Any]) -> int:
    """The block size that leaves the image intact (its side)."""
    return int(src["image_size"])


def _optional(cfg: dict, key: str, kind, *args: Any, **kwargs: Any) -> Any:
    """``kind(key, value)`` unless the value is null (or absent): then None."""
    value = lookup(cfg, key, None)
    return None if value is None else kind(key, value, *args, **kwargs)


def _optim(cfg: dict, key: str) -> None:
    check(cfg, f"{key}.optimizer", as_choice, OPTIMIZERS)
    check(cfg, f"{key}.lr", as_float, positive=True)
    for name in ("momentum", "weight_decay"):
        _optional(cfg, f"{key}.{name}", as_float, minimum=0.0)
    scheduler = lookup(cfg, f"{key}.scheduler", None)
    if scheduler is not None:
        as_choice(f"{key}.scheduler", scheduler, SCHEDULERS)


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
        check(cfg, f"{pre}.dataset", as_choice, ("fashion_mnist",))
        check(cfg, f"{pre}.seed", as_int, minimum=0)
        check(cfg, f"{pre}.n_train", as_int, minimum=1)
        check(cfg, f"{pre}.n_test", as_int, minimum=1)
        check(cfg, f"{pre}.val_fraction", as_float, minimum=0.0, maximum=0.5)
        check(cfg, f"{pre}.epochs", as_int, minimum=1)
        check(cfg, f"{pre}.batch_size", as_int, minimum=1)
        _optim(cfg, pre)
        check(cfg, f"{pre}.checkpoints", as_list, lambda k, v: as_float(k, v, minimum=0.0, maximum=1.0))
        _optional(cfg, f"{pre}.limit_batches", as_int, minimum=1)
    train = f"{key}.train"
    epochs = check(cfg, f"{train}.epochs", as_int, minimum=1)
    check(cfg, f"{train}.batch_size", as_int, minimum=1)
    check(cfg, f"{train}.speed_epochs", as_int, minimum=1, maximum=epochs)
    for arm in ARMS:
        _optim(cfg, f"{train}.optim.{arm}")


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
    check(cfg, f"{crit}.sigmas", as_list, lambda k, v: as_float(k, v, minimum=0.0))
    check(cfg, f"{crit}.noise", as_choice, ("absolute", "relative"))
    check(cfg, f"{crit}.epsilon", as_float, minimum=0.0)
    check(cfg, f"{crit}.draws", as_int, minimum=1)
    check(cfg, f"{crit}.criterion", as_choice, ("error", "loss"))
    checkpoint_seeds = check(cfg, "checkpoints.seeds", as_list, lambda k, v: as_int(k, v, minimum=0))
    for name in cfg["checkpoints"]["sources"]:
        if cfg["sources"][name]["kind"] != "conv4":
            raise UserError(f"checkpoints.sources names {name}, whose weights are not pretrained here",
                            "list conv4 sources only (the ImageNet weights come without checkpoints)")
        missing = set(checkpoint_seeds) - set(source_seeds(cfg, name))
        if missing:
            raise UserError(f"checkpoints.seeds {sorted(missing)} are not seeds of source {name}",
                            "use seeds of the train stage (the last checkpoint reuses its runs)")
