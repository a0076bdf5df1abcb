"""Study 1's protocol: its names, its claims with their margins, and the typed check of its config.

Dippel, Lenga, Goerttler, Obermayer, Höhne, "Transfer learning for segmentation problems: Choose the
right encoder and skip the decoder" (arXiv 2207.14508). The paper's abstract states the findings but
no number this suite could compare against, and no code is public: the protocol is ours, written out
in docs/protocols/segmentation.md. The claims, margins, thresholds and tolerances below are fixed
before any run.
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
# the target domain: the embedded composite target scenes (datamodules/scenes.py), or Oxford-IIIT Pet
# pet/background segmentation in torchvision's layout under the data root (datamodules/fullscale.py)
DATA_KINDS = ("scenes", "oxford_pet")
FROZEN_NORMS = ("eval", "train")  # BatchNorm policy of the frozen encoder (modules.segmentation)
TASK_TRAINING_KEYS = ("lr", "batch_size")  # source_tasks.<task> may override these of source (never the budget)
RECONSTRUCTION_FLOATS = ("mask_ratio", "noise_std")
RECONSTRUCTION_INTS = ("patch_size",)
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

# Convergence: a run's validation curve has plateaued when its best value improved by at most the tolerance
# within its last PLATEAU_EPOCHS (target: validation Dice, absolute) or SOURCE_PLATEAU_EPOCHS (source: validation
# loss, relative to the loss) epochs. 0.01 Dice is half the decision margin: a run still gaining more than that
# could move a verdict. The window is at most the profiles' early-stopping patience, so a run that stopped early
# (no better epoch for `patience` epochs) passes, and the check bites on runs that used their whole budget.
PLATEAU_EPOCHS = 5
PLATEAU_TOLERANCE = 0.01
SOURCE_PLATEAU_EPOCHS = 3
SOURCE_PLATEAU_TOLERANCE = 0.01
# Convergence speed: optimiser steps until the best-so-far validation Dice first reaches a threshold common to
# the arms compared. Report: THRESHOLD_SHARE x the best arm's mean converged validation Dice at that label
# fraction. Finding (a'): THRESHOLD_SHARE x the lower of the two compared arms' means, so an arm that ends lower
# is not counted as slower for never reaching a level it does not converge to. A run that never reaches the
# threshold counts as its whole step budget (censored at the budget).
THRESHOLD_SHARE = 0.95

_NONINFERIOR = "non-inferiority margin; " + DICE_MARGIN_REASON
CLAIMS = (
    Claim("a", "a transferred decoder gives converged test Dice equivalent to a random decoder's (per seed: mean "
               "over the decoder-training sources and label fractions of transferred − random)",
          PAPER, margin=DICE_MARGIN, margin_reason=DICE_MARGIN_REASON),
    *(Claim(f"a.{s}", f"{s} source: a transferred decoder gives converged test Dice equivalent to a random "
                      "decoder's (per seed: mean over label fractions)", PAPER, margin=DICE_MARGIN,
            margin_reason=DICE_MARGIN_REASON) for s in DECODER_SOURCES),
    Claim("a'", "a transferred decoder reaches the validation-Dice threshold in fewer optimiser steps than a random "
                "decoder (per seed: mean over decoder-training sources and label fractions)", PAPER),
    Claim("b", "encoders pretrained on segmentation or reconstruction beat the classification-pretrained encoder "
               "at the lowest label fraction (per seed: mean over the two sources; decoders random)", PAPER),
    *(Claim(f"b.{s}", f"the {s}-pretrained encoder beats the classification-pretrained encoder at the lowest "
                      "label fraction (decoders random)", PAPER) for s in STRONG_SOURCES),
    Claim("b'", "the advantage of segmentation/reconstruction encoders over the classification encoder is "
                "larger at the lowest label fraction than at the highest", PAPER),
    Claim("c", "the contrastive+reconstruction encoder, trained without labels, is competitive: at the lowest "
               "label fraction it is not worse than the label-trained source encoders (classification, "
               "segmentation; per seed: their mean) by more than the margin", PAPER, margin=DICE_MARGIN,
          margin_reason=_NONINFERIOR),
    *(Claim(f"c.{s}", f"at the lowest label fraction the contrastive+reconstruction encoder is not worse than the "
                      f"{s}-pretrained encoder by more than the margin", PAPER, margin=DICE_MARGIN,
            margin_reason=_NONINFERIOR) for s in LABELLED_SOURCES),
)

# What the paper states for each claim (its abstract, arXiv v1 and the TMLR submission), for the report's
# side-by-side table. The paper gives no number this suite could compare with (other data and networks).
_DECODER = ("\"pretrained weights for a decoder may yield faster convergence, but they do not improve the overall "
            "model performance as one can obtain equivalent results with randomly initialized decoders\"")
_ENCODER = ("\"it is more effective to reuse encoder weights trained on a segmentation or reconstruction task than "
            "reusing encoder weights trained on classification tasks\"")
_CONTRASTIVE = ("\"a contrastive self-supervised approach with multiple self-reconstruction tasks, which provides "
                "encoders that are suitable for transfer learning in segmentation problems in the absence of "
                "segmentation labels\"")
PAPER_SAYS = {"a": _DECODER, "a'": _DECODER, "b": _ENCODER, "b'": "\"the advantageous effect of pretrained models "
              "is strongest in low-data regimes\" (TMLR version)", "c": _CONTRASTIVE}


def paper_says(claim_id: str) -> str:
    """The paper's statement behind a claim id (per-source ids share their pooled claim's statement)."""
    return PAPER_SAYS.get(claim_id, PAPER_SAYS.get(claim_id.split(".")[0], ""))


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
        allowed = TASK_TRAINING_KEYS + {"contrastive": (*CONTRASTIVE_FLOATS, *CONTRASTIVE_INTS, "tasks"),
                                         "reconstruction": (*RECONSTRUCTION_FLOATS, *RECONSTRUCTION_INTS)
                                         }.get(task, ())
        for option, value in options.items():
            key = f"source_tasks.{task}.{option}"
            as_choice(key, option, allowed)
            if option == "mask_ratio":
                as_float(key, value, minimum=0.0, maximum=0.95)
            elif option in ("batch_size", *CONTRASTIVE_INTS, *RECONSTRUCTION_INTS):
                _positive_int(key, value)
            elif option == "lr":
                as_float(key, value, positive=True)
            elif option == "tasks":
                as_list(key, value, lambda k, v: as_choice(k, v, CORRUPTIONS))
            else:
                as_float(key, value, minimum=0.0)


def _pet_root(cfg: dict) -> str:
    """The data root holding Oxford-IIIT Pet (``--data-root`` or $DATA_ROOT), checked before any training."""
    from datamodules.fullscale import MissingDatasetError, load_oxford_pet, resolve_root

    try:
        root = resolve_root("oxford_pet", cfg.get("data_root"))
        for split in ("trainval", "test"):
            load_oxford_pet(root, split, ["category", "segmentation"])
    except MissingDatasetError as err:
        problem, _, fix = str(err).partition("Fix: ")
        raise UserError(f"data.kind=oxford_pet needs the dataset on disk: {problem.strip()}",
                        fix or "pass --data-root DIR") from None
    return str(root)


def validate(cfg: dict) -> dict[str, Any]:
    """Check every value the study reads, once, before any run; return the typed values the plan uses."""
    checked: dict[str, Any] = {"seeds": seeds(cfg)}
    check(cfg, "model.encoder", _encoder_name)
    check(cfg, "model.decoder_channels", as_list, _positive_int)
    for key in ("model.input_mean", "model.input_std"):
        check(cfg, key, as_list, as_float, min_length=1)
    check(cfg, "imagenet.allow_download", as_bool)
    checked["data_kind"] = check(cfg, "data.kind", as_choice, DATA_KINDS)
    if checked["data_kind"] == "oxford_pet":
        checked["data_root"] = _pet_root(cfg)
    check(cfg, "data.image_size", as_int, minimum=8)
    for key in ("source.n_train", "source.n_val", "source.epochs", "source.batch_size", "source.patience"):
        check(cfg, key, as_int, minimum=1)
    check(cfg, "source.lr", as_float, positive=True)
    check(cfg, "source.seed", as_int, minimum=0)
    _source_tasks(cfg)
    for key in ("target.n_train", "target.n_val", "target.n_test", "target.epochs", "target.batch_size",
                "target.patience"):
        check(cfg, key, as_int, minimum=1)
    check(cfg, "target.frozen_norms", as_choice, FROZEN_NORMS)
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
