"""The runs of the what-is-transferred study: stages x grid, each run after the runs it needs.

- ``pretrain`` (per conv4 source): the source network and its checkpoints through pretraining;
- ``train`` (source x arm x block size x seed): P-T or R-T on the b x b block-shuffled target;
- ``pairs`` (per analysed source): CKA, l2 and interpolation barriers of every two intact runs;
- ``criticality`` (per analysed source x arm x seed): module criticality of one intact run;
- ``checkpoint`` (per conv4 source x earlier pretraining checkpoint x seed): fine-tuning from it
  (the last checkpoint is the intact P-T run of ``train``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from benchmarks.core.study import Run
from benchmarks.studies.transfer.protocol import ARMS, check_config, intact, source_config, source_seeds

MODEL_KEYS = ("kind", "backbone", "in_channels", "image_size", "hidden", "allow_download")
PAIR_KEYS = ("probe_size", "lambdas", "bn_batches")


def run_source(src: Mapping[str, Any], *parts: str) -> dict[str, Any]:
    """What of a source a run depends on: its model and the named parts (pretrain, train).

    Grid-defining lists (block sizes, seeds) stay out, so adding a block size or a seed leaves the
    keys of finished runs unchanged and they are not redone.
    """
    return {k: src[k] for k in (*MODEL_KEYS, *parts) if k in src}


def make_plan(study: str, cfg: dict) -> list[Run]:
    """All runs of ``cfg`` (checked first, before any training), dependencies first."""
    from benchmarks.studies.transfer.train import checkpoint_steps

    check_config(cfg)
    target = cfg["target"]
    threads = cfg.get("threads")
    used = list(dict.fromkeys(cfg["use_sources"]))
    runs: list[Run] = []
    pretrain_key: dict[str, str] = {}
    train_key: dict[tuple, str] = {}
    trained: dict[str, dict[str, Any]] = {}  # what a downstream run of each source depends on
    for name in used:
        src = source_config(cfg, name)
        trained[name] = run_source(src, "pretrain", "train")
        if src["kind"] == "conv4":
            run = Run(study, "pretrain", {"source": name},
                      {"source": run_source(src, "pretrain"), "seed": src["pretrain"]["seed"], "threads": threads})
            runs.append(run)
            pretrain_key[name] = run.key
    for name in used:
        src = source_config(cfg, name)
        for block in sorted({int(b) for b in src["block_sizes"]}):
            for arm in ARMS:
                for seed in source_seeds(cfg, name):
                    needs = (pretrain_key[name],) if arm == "pretrained" and name in pretrain_key else ()
                    run = Run(study, "train", {"source": name, "init": arm, "block": block, "seed": seed},
                              {"source": trained[name], "target": target, "threads": threads}, needs)
                    runs.append(run)
                    train_key[(name, arm, block, seed)] = run.key
    for name in dict.fromkeys(cfg["analysis"]["sources"]):
        src = source_config(cfg, name)
        members = [train_key[(name, arm, intact(src), s)] for arm in ARMS for s in source_seeds(cfg, name)]
        pair_cfg = {k: cfg["analysis"][k] for k in PAIR_KEYS}
        runs.append(Run(study, "pairs", {"source": name},
                        {"source": trained[name], "target": target, "analysis": pair_cfg, "runs": sorted(members),
                         "threads": threads}, tuple(members)))
        for arm in ARMS:
            for seed in source_seeds(cfg, name):
                of = train_key[(name, arm, intact(src), seed)]
                runs.append(Run(study, "criticality", {"source": name, "init": arm, "seed": seed},
                                {"source": trained[name], "target": target, "threads": threads,
                                 "criticality": dict(cfg["analysis"]["criticality"]), "of": of}, (of,)))
    for name in dict.fromkeys(cfg["checkpoints"]["sources"]):
        src = source_config(cfg, name)
        for step in checkpoint_steps(src["pretrain"])[:-1]:  # the last one is the intact P-T run
            for seed in dict.fromkeys(cfg["checkpoints"]["seeds"]):
                runs.append(Run(study, "checkpoint", {"source": name, "step": step, "seed": int(seed)},
                                {"source": trained[name], "target": target, "threads": threads},
                                (pretrain_key[name],)))
    return runs
