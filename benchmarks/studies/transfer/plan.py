"""The runs of the what-is-transferred study: stages x grid, each run after the runs it needs.

- ``pretrain`` (per conv4 source): the source network and its checkpoints through pretraining;
- ``train`` (source x arm x block size x learning rate x seed): P-T or R-T on the b x b block-shuffled
  target; both arms run the same learning-rate grid. R-T never sees the source, so sources with the same
  architecture and training share their R-T runs (kept under the first such source's name);
- ``pairs`` (per analysed source): CKA, l2 and interpolation barriers of every two intact runs, each arm
  at its learning rate chosen on validation (needs every intact run to choose);
- ``criticality`` (per analysed source x arm x seed): module criticality of one intact run at the arm's
  chosen rate;
- ``checkpoint`` (per conv4 source x earlier pretraining checkpoint x seed): fine-tuning from it at the
  P-T arm's chosen intact rate (the last checkpoint is the intact P-T run of ``train``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from benchmarks.core.study import Run
from benchmarks.studies.transfer.protocol import (
    ARMS,
    MODEL_KEYS,
    check_config,
    intact,
    rt_owner,
    scratch_config,
    source_config,
    source_seeds,
)

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
    train_key: dict[tuple, str] = {}  # (source, arm, block, lr, seed) -> run key (R-T: under its owner's name)
    trained: dict[str, dict[str, Any]] = {}  # what a downstream P-T run of each source depends on
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
        owner = rt_owner(cfg, name)
        for block in sorted({int(b) for b in src["block_sizes"]}):
            for arm in ARMS:
                for lr in lrs_of(src):
                    for seed in source_seeds(cfg, name):
                        if arm == "random" and (owner, arm, block, lr, seed) in train_key:
                            train_key[(name, arm, block, lr, seed)] = train_key[(owner, arm, block, lr, seed)]
                            continue
                        pretrained = arm == "pretrained"
                        needs = (pretrain_key[name],) if pretrained and name in pretrain_key else ()
                        run = Run(study, "train", {"source": name if pretrained else owner, "init": arm,
                                                   "block": block, "lr": lr, "seed": seed},
                                  {"source": trained[name] if pretrained else scratch_config(src), "target": target,
                                   "threads": threads}, needs)
                        runs.append(run)
                        train_key[(name, arm, block, lr, seed)] = run.key
                        train_key[(owner if not pretrained else name, arm, block, lr, seed)] = run.key

    def intact_runs(name: str, arms=ARMS) -> list[str]:
        src = source_config(cfg, name)
        return sorted({train_key[(name, arm, intact(src), lr, s)] for arm in arms for lr in lrs_of(src)
                       for s in source_seeds(cfg, name)})

    for name in dict.fromkeys(cfg["analysis"]["sources"]):
        src = source_config(cfg, name)
        members = intact_runs(name)
        pair_cfg = {k: cfg["analysis"][k] for k in PAIR_KEYS}
        runs.append(Run(study, "pairs", {"source": name},
                        {"source": trained[name], "target": target, "analysis": pair_cfg, "runs": members,
                         "threads": threads}, tuple(members)))
        for arm in ARMS:
            arm_runs = intact_runs(name, (arm,))
            for seed in source_seeds(cfg, name):
                runs.append(Run(study, "criticality", {"source": name, "init": arm, "seed": seed},
                                {"source": trained[name], "target": target, "threads": threads,
                                 "criticality": dict(cfg["analysis"]["criticality"]), "runs": arm_runs},
                                tuple(arm_runs)))
    for name in dict.fromkeys(cfg["checkpoints"]["sources"]):
        src = source_config(cfg, name)
        pt_runs = intact_runs(name, ("pretrained",))
        for step in checkpoint_steps(src["pretrain"], intact(src))[:-1]:  # the last one is the intact P-T run
            for seed in dict.fromkeys(cfg["checkpoints"]["seeds"]):
                runs.append(Run(study, "checkpoint", {"source": name, "step": step, "seed": int(seed)},
                                {"source": trained[name], "target": target, "threads": threads, "runs": pt_runs},
                                (pretrain_key[name], *pt_runs)))
    return runs


def lrs_of(src: Mapping[str, Any]) -> list[float]:
    """The learning-rate grid of a source's downstream runs (the same for both arms)."""
    return sorted({float(lr) for lr in src["train"]["lrs"]})
