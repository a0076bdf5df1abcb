"""Study 1's protocol: its names, its claims with their margins, and the typed check of its config.

Dippel, Lenga, Goerttler, Obermayer, Höhne, "Transfer learning for segmentation problems: Choose the
right encoder and skip the decoder" (arXiv 2207.14508). The paper's abstract states the findings but
no number this suite could compare against, and no code is public: the protocol is ours, written out
in docs/protocols/segmentation.md. The claims and margins below are fixed before any run.
"""

from __future__ import annotations

from typing import Any

from benchmarks.core.config import as_bool, as_choice, as_float, as_int, as_list, check, lookup, seeds
from benchmarks.core.errors import UserError
from benchmarks.core.findings import Claim

STUDY = "segmentation"
PROTOCOL = "docs/protocols/segmentation.md"
PAPER = "Dippel et al. 2022 (arXiv 2207.14508)"
UNIT = "seed (independent training run)"

ENCODER_SOURCES = ("random", "imagenet", "classification", "segmentation", "reconstruction", "contrastive")
SOURCE_TASKS = ("classification", "segmentation", "reconstruction", "contrastive")
DECODER_SOURCES = ("segmentation", "reconstruction", "contrastive")  # sources that train a decoder
CONTROLS = ("frozen_random_encoder",)
STRONG_SOURCES = ("segmentation", "reconstruction")  # finding (b): these beat classification
LABELLED_SOURCES = ("classification", "segmentation")  # finding (c): the sources trained with labels
DATA_KINDS = ("scenes",)  # the embedded composite scenes (datamodules/scenes.py)
TASK_TRAINING_KEYS = ("epochs", "lr", "batch_size")  # source_tasks.<task> may override these of source
# the ContrastiveReconstructionPretext settings a profile may set under source_tasks.contrastive
CONTRASTIVE_FLOATS = ("temperature", "contrastive_weight", "reconstruction_weight", "weight_decay",
                      "crop_min_scale", "colour_jitter", "grayscale_p", "noise_std", "hole_fraction")
CONTRASTIVE_INTS = ("projection_dim",)

# Dice is in [0, 1]. The paper says "does not raise" and "competitive" without a threshold. Two points of
# test Dice is the smallest change we would act on when choosing what to transfer; the value was set with
# the study (the tiny profile's margin from its first version), not tuned to any outcome.
DICE_MARGIN = 0.02
DICE_MARGIN_REASON = ("not from the paper (it gives no threshold): 2 points of test Dice, the smallest change "
                      "we would act on when choosing what to transfer; set with the study, not tuned to results")

CLAIMS = (
    Claim("a", "a transferred decoder does not change final test Dice compared with a random decoder "
               "(per seed: mean over decoder-training sources and label fractions of transferred − random)",
          PAPER, margin=DICE_MARGIN, margin_reason=DICE_MARGIN_REASON),
    Claim("b", "encoders pretrained on segmentation and on reconstruction each beat the classification-"
               "pretrained encoder at the lowest label fraction (decoders random in every arm)", PAPER),
    Claim("b'", "the advantage of segmentation/reconstruction encoders over the classification encoder is "
                "larger at the lowest label fraction than at the highest", PAPER),
    Claim("c", "the contrastive+reconstruction encoder, trained without labels, is competitive: at the lowest "
               "label fraction it is not worse than any label-trained source encoder (classification, "
               "segmentation) by more than the margin", PAPER, margin=DICE_MARGIN,
          margin_reason="non-inferiority margin; " + DICE_MARGIN_REASON),
)


def claim(claim_id: str) -> Claim:
    return next(c for c in CLAIMS if c.id == claim_id)


def variant_name(encoder: str, decoder: str, freeze: str = "none") -> str:
    """``encoder/decoder`` (+ ``/frozen-encoder``): the name used in tables, figures and run keys."""
    name = f"{encoder}/{decoder}"
    return name + ("/frozen-encoder" if freeze == "encoder" else "")


# ============================================================================================ config
def _positive_int(key: str, value: Any) -> int:
    return as_int(key, value, minimum=1)


def _encoder_name(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise UserError(f"{key}={value!r} is not an encoder name",
                        f"use an smp encoder name, e.g. --set {key}=tu-tf_efficientnet_lite0")
    return value


def _fraction(key: str, value: Any) -> float:
    number = as_float(key, value, maximum=1.0)
    if not number > 0:
        raise UserError(f"label fraction {key}={value!r} is not in (0, 1]",
                        "set target.label_fractions to numbers in (0, 1], e.g. [0.25, 1.0]")
    return number


def _optional(cfg: dict, key: str, kind, *args: Any, allow: tuple = (None,), **kwargs: Any) -> Any:
    value = lookup(cfg, key)
    return value if value in allow else kind(key, value, *args, **kwargs)


def _limit_batches(cfg: dict) -> None:
    """null (every batch), a whole number of batches >= 1, or a fraction of the batches in (0, 1]."""
    value = lookup(cfg, "limit_batches")
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return
    if isinstance(value, float) and 0 < value <= 1:
        return
    raise UserError(f"limit_batches={value!r} is neither null, a whole number >= 1 nor a fraction in (0, 1]",
                    "use null for every batch, e.g. 2 for two batches per stage, or 0.5 for half of them")


def _source_tasks(cfg: dict) -> None:
    from modules.pretext import CORRUPTIONS

    tasks = lookup(cfg, "source_tasks", {}) or {}
    if not isinstance(tasks, dict):
        raise UserError(f"source_tasks={tasks!r} is not a mapping", "write source_tasks.<task>.<option>: value")
    for task, options in tasks.items():
        as_choice("source_tasks", task, SOURCE_TASKS)
        options = options or {}
        allowed = TASK_TRAINING_KEYS + ((*CONTRASTIVE_FLOATS, *CONTRASTIVE_INTS, "tasks")
                                        if task == "contrastive" else ())
        for option, value in options.items():
            key = f"source_tasks.{task}.{option}"
            as_choice(key, option, allowed)
            if option in ("epochs", "batch_size", *CONTRASTIVE_INTS):
                _positive_int(key, value)
            elif option == "lr":
                as_float(key, value, positive=True)
            elif option == "tasks":
                as_list(key, value, lambda k, v: as_choice(k, v, CORRUPTIONS))
            else:
                as_float(key, value, minimum=0.0)


def validate(cfg: dict) -> dict[str, Any]:
    """Check every value the study reads, once, before any run; return the typed values the plan uses."""
    checked: dict[str, Any] = {"seeds": seeds(cfg)}
    check(cfg, "model.encoder", _encoder_name)
    check(cfg, "model.decoder_channels", as_list, _positive_int)
    for key in ("model.input_mean", "model.input_std"):
        check(cfg, key, as_list, as_float, min_length=1)
    check(cfg, "imagenet.allow_download", as_bool)
    check(cfg, "data.kind", as_choice, DATA_KINDS)
    check(cfg, "data.image_size", as_int, minimum=8)
    for key in ("source.n_train", "source.n_val", "source.epochs", "source.batch_size"):
        check(cfg, key, as_int, minimum=1)
    check(cfg, "source.lr", as_float, positive=True)
    check(cfg, "source.seed", as_int, minimum=0)
    _source_tasks(cfg)
    for key in ("target.n_train", "target.n_val", "target.n_test", "target.epochs", "target.batch_size"):
        check(cfg, key, as_int, minimum=1)
    check(cfg, "target.lr", as_float, positive=True)
    check(cfg, "target.min_steps_per_epoch", as_int, minimum=0)
    checked["fractions"] = sorted(check(cfg, "target.label_fractions", as_list, _fraction))
    if len(set(checked["fractions"])) != len(checked["fractions"]):
        raise UserError(f"target.label_fractions={lookup(cfg, 'target.label_fractions')} repeats a fraction",
                        "list each label fraction once")
    checked["encoder_sources"] = check(cfg, "grid.encoder_sources", as_list,
                                       lambda k, v: as_choice(k, v, ENCODER_SOURCES))
    checked["transfer_decoder"] = check(cfg, "grid.transfer_decoder", as_bool)
    controls = lookup(cfg, "grid.controls")
    checked["controls"] = [] if controls in (None, []) else as_list(
        "grid.controls", controls, lambda k, v: as_choice(k, v, CONTROLS))
    check(cfg, "analysis.probe_size", as_int, minimum=1)
    _limit_batches(cfg)
    _optional(cfg, "checkpoint_every", as_int, minimum=1)
    _optional(cfg, "threads", as_int, minimum=1, allow=(None, "auto"))
    return checked
