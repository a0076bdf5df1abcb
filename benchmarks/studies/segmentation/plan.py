"""Study 1's runs: the source tasks (stage ``source``) and the fine-tuning grid (stage ``target``).

1. ``source``, one run per source task, trained once: its key depends only on its own config, so it
   is cached across benchmark runs and target settings. ``imagenet`` (real EfficientNet-Lite0 weights)
   and ``random`` need no source run.
   Sources always train on the embedded source scenes.
2. ``target``, variant x label fraction x seed, on the target domain ``data.kind`` (the embedded target
   scenes, or Oxford-IIIT Pet pet/background segmentation from the data root): every encoder source with a
   random decoder, with the decoder transferred from the same source where the source trains one, and the
   control "frozen random encoder + trained decoder". The same seed gives the same labelled subset and the same fresh
   parts for every variant, so variants are compared pairwise by seed.
"""

from __future__ import annotations

from typing import Any

from benchmarks.core.config import as_bool, as_choice, as_list, check, lookup
from benchmarks.core.study import Run
from benchmarks.studies.segmentation.protocol import (
    CONTROLS,
    DECODER_SOURCES,
    ENCODER_SOURCES,
    SOURCE_TASKS,
    STUDY,
    validate,
    variant_name,
)


def variants(cfg: dict) -> list[dict]:
    """The fine-tuning variants of the grid: every encoder source x decoder (random, transferred if any),
    then the controls."""
    encoders = check(cfg, "grid.encoder_sources", as_list, lambda k, v: as_choice(k, v, ENCODER_SOURCES))
    transfer = check(cfg, "grid.transfer_decoder", as_bool)
    controls = lookup(cfg, "grid.controls") or []
    controls = as_list("grid.controls", controls, lambda k, v: as_choice(k, v, CONTROLS), min_length=0)
    out = []
    for encoder in encoders:
        decoders = ["random"] + (["transferred"] if transfer and encoder in DECODER_SOURCES else [])
        for decoder in decoders:
            out.append({"variant": variant_name(encoder, decoder), "encoder": encoder, "decoder": decoder,
                        "freeze": "none"})
    for _control in controls:  # the one control: frozen random encoder, trained random decoder
        out.append({"variant": variant_name("random", "random", "encoder"), "encoder": "random",
                    "decoder": "random", "freeze": "encoder"})
    return out


def source_config(cfg: dict, task: str) -> dict[str, Any]:
    """Everything a source run depends on, and nothing else (so its key, and its cache, stay put)."""
    options = (cfg.get("source_tasks") or {}).get(task) or {}
    # the source domain is always the embedded source scenes; data.kind chooses only the target domain
    return {"task": task, "model": cfg["model"], "data": {"image_size": cfg["data"]["image_size"]},
            "source": cfg["source"],
            "task_options": options, "limit_batches": cfg.get("limit_batches"),
            "checkpoint_every": cfg.get("checkpoint_every"), "threads": cfg.get("threads")}


def source_run(cfg: dict, task: str) -> Run:
    return Run(STUDY, "source", {"task": task}, source_config(cfg, task))


def needed_sources(cfg: dict) -> list[str]:
    """The source tasks some variant's encoder comes from (a transferred decoder comes from the same one)."""
    wanted = {v["encoder"] for v in variants(cfg)}
    return [t for t in SOURCE_TASKS if t in wanted]


def plan(cfg: dict) -> list[Run]:
    """Every run, sources first; the config is checked once here, before any training."""
    checked = validate(cfg)
    sources = {task: source_run(cfg, task) for task in needed_sources(cfg)}
    runs: list[Run] = list(sources.values())
    target_common = {"model": cfg["model"], "data": cfg["data"], "target": cfg["target"],
                     "imagenet": cfg["imagenet"], "analysis": cfg["analysis"],
                     "limit_batches": cfg.get("limit_batches"), "checkpoint_every": cfg.get("checkpoint_every"),
                     "threads": cfg.get("threads")}
    if checked["data_kind"] == "oxford_pet":  # the only kind read from disk
        target_common["data_root"] = checked["data_root"]
    for fraction in checked["fractions"]:
        for seed in checked["seeds"]:
            for v in variants(cfg):
                source = sources.get(v["encoder"])
                needs = (source.key,) if source is not None else ()
                config = {**target_common, "source_key": source.key if source else None,
                          "init": {k: v[k] for k in ("encoder", "decoder", "freeze")}}
                params = {"variant": v["variant"], "fraction": fraction, "seed": seed}
                runs.append(Run(STUDY, "target", params, config, needs))
    return runs
