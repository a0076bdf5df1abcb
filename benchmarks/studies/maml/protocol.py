"""The MAML study's protocol: what it measures, the paper's claims and numbers, and the config it accepts.

After Goerttler & Obermayer, "Exploring the similarity of representations in model-agnostic
meta-learning" (arXiv 2105.05757); the protocol in words is docs/protocols/maml.md. Everything here
is fixed before any run: the claims (with the measure, layers and threshold that decide them) never
depend on the results, and ``check_config`` validates every config value the study reads, once, when
the plan is made, before anything trains.
"""

from __future__ import annotations

from benchmarks.core.config import as_bool, as_choice, as_float, as_int, as_list, check, lookup, seeds
from benchmarks.core.errors import UserError, unknown_name
from benchmarks.core.findings import Claim

STAGES = ("meta_train", "control")
ALGORITHMS = ("maml", "anil")
# The analysed networks: MAML and ANIL (meta-trained); "control", the conventionally trained CNN analysed over its
# training as the paper's control (its mnist.py); "finetuned_control", the same CNN given a fresh head and MAML's
# inner loop on every layer (a second control: does a conventionally trained body also stay put in the inner loop?).
MODELS = ("maml", "anil", "control", "finetuned_control")
MEASURES = ("rsa_dissimilarity", "linear_cka_dissimilarity")  # similarity registry names
SOURCES = ("glyphs", "omniglot", "mini_imagenet")
SPLITS = ("train", "val", "test")
INNER_LR_MODES = ("fixed", "per_layer", "per_element")  # modules.maml.INNER_LR_MODES
ENGINES = ("auto", "loop", "vmap")  # modules.maml.ENGINE_NAMES
LAYERS = ("block1", "block2", "block3", "block4", "head")
BODY = LAYERS[:-1]
SECTIONS = ("data", "model", "maml")  # the sections an experiment may override
MIN_PROBES = 20  # the paper's code analyses 20 fixed query images (20-way Omniglot, one per class)

# Published meta-test accuracies (source, ways, shots, algorithm) -> accuracy, shown beside ours in the report.
PUBLISHED = {("omniglot", 5, 1, "maml"): 0.987, ("omniglot", 20, 1, "maml"): 0.958,
             ("mini_imagenet", 5, 1, "maml"): 0.487, ("mini_imagenet", 5, 5, "maml"): 0.631,
             ("mini_imagenet", 5, 1, "anil"): 0.467}

# What decides the findings (fixed here, not in the profiles, so a verdict cannot be tuned by config).
MEASURE = "rsa_dissimilarity"  # the paper's measure: 1 - Spearman of (1 - Pearson) RDMs; CKA is reported beside it
EARLY_LAYERS = ("block1", "block2")  # "layers closer to the input"
LATE_LAYERS = ("block3", "block4")  # the body layers closer to the head
UNIT = "seed (independent meta-training or training run)"
PAPER = "Goerttler & Obermayer 2021 (arXiv 2105.05757)"

FEATURE_REUSE = Claim(
    "feature_reuse",
    "Feature reuse: over the inner loop (step 0 vs the last analysed step) every body layer of the meta-trained "
    f"MAML network changes less than the head ({MEASURE} of the head minus that of the most-changed body layer "
    "> 0 at the final checkpoint), in every experiment",
    f"{PAPER}, base analysis (Fig. 1): the representations before and after the inner loop are near-identical "
    "except the head, as Raghu et al. 2020 found with CCA")
EARLY_SIMILARITY_FROM_TASK = Claim(
    "early_similarity_from_task",
    f"The higher similarity of the layers closer to the input ({', '.join(EARLY_LAYERS)} change less than "
    f"{', '.join(LATE_LAYERS)}) comes from the learning task, not from MAML: a conventionally trained CNN of the "
    "same architecture shows it too, each layer compared with its representation at the start of training, "
    "in every experiment",
    f"{PAPER}, abstract and the control network of its code (mnist.py: each layer at training step t vs step 0)")
INNER_VS_META_TRAINING = Claim(
    "inner_vs_meta_training",
    "Inner-loop steps change the representations more than meta-training does between consecutive checkpoints "
    "(base analysis minus neighbour analysis > 0, mean over layers), in every experiment",
    f"{PAPER}, base analysis vs neighbour analysis (meta-initialisation vs the one a checkpoint earlier)")
CLAIMS = (FEATURE_REUSE, EARLY_SIMILARITY_FROM_TASK, INNER_VS_META_TRAINING)


# ============================================================================================ config
def check_config(cfg: dict) -> dict[str, dict]:
    """Validate every value the study reads; return each experiment's resolved config with typed values.

    An experiment's config is the shared ``data``/``model``/``maml`` sections with the experiment's own
    entries (they win). The paper profile leaves shared entries that every experiment sets ``null``; a
    ``null`` an experiment does not fill is an error, and ``shadows`` lets the CLI reject a ``--set`` of
    a shared key that an experiment's own entry would override.
    """
    seeds(cfg)
    experiments = lookup(cfg, "experiments")
    if not isinstance(experiments, dict) or not experiments:
        raise UserError(f"experiments={experiments!r} must map experiment names to overrides of data/model/maml "
                        "(e.g. {glyphs: {}})", "see benchmarks/configs/maml/paper.yaml for two experiments")
    as_list("maml.algorithms", lookup(cfg, "maml.algorithms"), lambda k, v: as_choice(k, v, ALGORITHMS))
    resolved = {str(name): _experiment(cfg, str(name)) for name in experiments}
    analysis, control = _check_analysis(cfg), _check_control(cfg)
    return {name: {**sections, "analysis": analysis, "control": control} for name, sections in resolved.items()}


def shadows(cfg: dict) -> dict[str, list[str]]:
    """{shared key: the experiment entries that override it}, e.g. "maml.inner_lr" ->
    ["experiments.omniglot.maml.inner_lr", ...]: the CLI rejects a ``--set`` of a shared key that an
    experiment's own entry would silently override (benchmarks.core.config.check_not_shadowed)."""
    out: dict[str, list[str]] = {}
    experiments = cfg.get("experiments")
    for name, own in (experiments.items() if isinstance(experiments, dict) else ()):
        for section in SECTIONS:
            entries = own.get(section) if isinstance(own, dict) else None
            for key in entries if isinstance(entries, dict) else ():
                out.setdefault(f"{section}.{key}", []).append(f"experiments.{name}.{section}.{key}")
    return out


def _experiment(cfg: dict, name: str) -> dict:
    overrides = cfg["experiments"][name]
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, dict):
        raise UserError(f"experiments.{name}={overrides!r} is not a mapping of sections",
                        f"write experiments.{name} as {{data: {{...}}, model: {{...}}, maml: {{...}}}} or {{}}")
    merged: dict[str, dict] = {}
    for section in overrides:
        if section not in SECTIONS:
            raise unknown_name(f"section in experiments.{name}", section, SECTIONS)
    for section in SECTIONS:
        shared = lookup(cfg, section)
        own = overrides.get(section) or {}
        if not isinstance(shared, dict) or not isinstance(own, dict):
            raise UserError(f"{section} (shared or in experiments.{name}) is not a mapping",
                            "write it as 'key: value' entries like the tiny profile")
        for key in own:
            if key not in shared:
                raise unknown_name(f"key experiments.{name}.{section}.{key} (not a {section} entry)", key, shared)
            if (section, key) == ("maml", "algorithms"):
                raise UserError(f"experiments.{name}.maml.algorithms is not read per experiment",
                                "set maml.algorithms: every experiment runs the same algorithms")
        merged[section] = {**shared, **own}
    return {"data": _check_data(name, merged["data"], overrides), "model": _check_model(name, merged["model"],
                                                                                        overrides),
            "maml": _check_maml(name, merged["maml"], overrides)}


def _key(name: str, overrides: dict, section: str, key: str) -> str:
    """Where the user wrote a value: the experiment's override or the shared section."""
    return f"experiments.{name}.{section}.{key}" if key in (overrides.get(section) or {}) else f"{section}.{key}"


def _typed(name: str, values: dict, overrides: dict, section: str, checks: dict[str, tuple]) -> dict:
    out = dict(values)
    for key, (kind, options, required) in checks.items():
        where = _key(name, overrides, section, key)
        if key not in values:
            if required:
                raise UserError(f'the maml config has no "{where}" entry',
                                "start from benchmarks/configs/maml/tiny.yaml (--print-config shows every key)")
            continue
        if values[key] is None:
            raise UserError(f"{where} is null for experiment {name}",
                            f"set it for this experiment: --set experiments.{name}.{section}.{key}=<value>")
        out[key] = kind(where, values[key], **options)
    return out


def _check_data(name: str, data: dict, overrides: dict) -> dict:
    whole = (as_int, {"minimum": 1}, True)
    return _typed(name, data, overrides, "data", {
        "source": (as_choice, {"choices": SOURCES}, True), "ways": (as_int, {"minimum": 2}, True),
        "shots": whole, "queries": whole, "image_size": whole,
        "glyph_seed": (as_int, {"minimum": 0}, False), "min_fonts": (as_int, {"minimum": 1}, False),
        "instances_per_char": (as_int, {"minimum": 1}, False)})


def _check_model(name: str, model: dict, overrides: dict) -> dict:
    return _typed(name, model, overrides, "model", {"in_channels": (as_int, {"minimum": 1}, True),
                                                    "hidden": (as_int, {"minimum": 1}, True)})


def _check_maml(name: str, meta: dict, overrides: dict) -> dict:
    whole = (as_int, {"minimum": 1}, True)
    rate = (as_float, {"positive": True}, True)
    checks = {"first_order": (as_bool, {}, True), "meta_batch_size": whole, "inner_lr": rate,
              "inner_lr_mode": (as_choice, {"choices": INNER_LR_MODES}, True), "inner_steps": whole,
              "inner_steps_test": whole, "meta_lr": rate, "meta_steps": whole, "steps_per_epoch": whole,
              "engine": (as_choice, {"choices": ENGINES}, True), "val_tasks": whole, "val_every_epochs": whole,
              "test_tasks": whole}
    return _typed(name, {k: v for k, v in meta.items() if k != "algorithms"}, overrides, "maml", checks)


def _check_analysis(cfg: dict) -> dict:
    out = dict(lookup(cfg, "analysis"))
    out["tasks"] = check(cfg, "analysis.tasks", as_int, minimum=2)
    out["split"] = check(cfg, "analysis.split", as_choice, SPLITS)
    out["probes"] = check(cfg, "analysis.probes", as_int, minimum=3)
    out["seed"] = check(cfg, "analysis.seed", as_int, minimum=0)
    out["checkpoints"] = check(cfg, "analysis.checkpoints", as_int, minimum=1)
    out["record_steps"] = steps = check(cfg, "analysis.record_steps", as_list, lambda k, v: as_int(k, v, minimum=0),
                                        min_length=2)
    if 0 not in steps or len(set(steps)) != len(steps):
        raise UserError(f"analysis.record_steps={steps} must hold 0 (before adaptation) and distinct later steps",
                        "use e.g. [0, 1, 5, 10]")
    out["measures"] = measures = check(cfg, "analysis.measures", as_list, lambda k, v: as_choice(k, v, MEASURES))
    if MEASURE not in measures:
        raise UserError(f"analysis.measures={measures} lacks {MEASURE}, the measure the findings are decided on",
                        f"keep {MEASURE} in the list, e.g. "
                        f"--set analysis.measures=[{MEASURE}, linear_cka_dissimilarity]")
    return out


def _check_control(cfg: dict) -> dict:
    """The control's section; ``limit_batches`` and ``inner_lr`` may be null (all batches, MAML's rate)."""
    out = dict(lookup(cfg, "control"))
    out["epochs"] = check(cfg, "control.epochs", as_int, minimum=1)
    out["batch_size"] = check(cfg, "control.batch_size", as_int, minimum=1)
    out["lr"] = check(cfg, "control.lr", as_float, positive=True)
    out["head_seed"] = check(cfg, "control.head_seed", as_int, minimum=0)
    out["test_tasks"] = check(cfg, "control.test_tasks", as_int, minimum=0)
    if lookup(cfg, "control.limit_batches") is not None:
        out["limit_batches"] = check(cfg, "control.limit_batches", as_int, minimum=1)
    if lookup(cfg, "control.inner_lr") is not None:
        out["inner_lr"] = check(cfg, "control.inner_lr", as_float, positive=True)
    return out
