"""The MAML study's plan: per experiment and seed, one ``meta_train`` run per algorithm and one ``control``."""

from __future__ import annotations

from benchmarks.core.config import seeds
from benchmarks.core.study import Run
from benchmarks.studies.maml.protocol import check_config


def experiment_config(cfg: dict, name: str, checked: dict[str, dict] | None = None) -> dict:
    """One experiment's resolved config (shared data/model/maml with its overrides), values typed.

    ``control.inner_lr`` null means the experiment's MAML inner learning rate.
    """
    sections = (checked or check_config(cfg))[name]
    control = dict(sections["control"])
    if control.get("inner_lr") is None:
        control["inner_lr"] = sections["maml"]["inner_lr"]
    out = {"experiment": name, "data": sections["data"], "model": sections["model"], "maml": sections["maml"],
           "analysis": dict(sections["analysis"]), "control": control}
    if sections["data"]["source"] != "glyphs":
        out["data_root"] = cfg.get("data_root")
    return out


def analysed_steps(total_steps: int, checkpoints: int) -> list[int]:
    """``checkpoints`` + 1 evenly spaced optimiser steps from 0 (the init) to ``total_steps``."""
    return sorted({round(i * total_steps / checkpoints) for i in range(checkpoints + 1)})


def runs(study: str, cfg: dict) -> list[Run]:
    """Every run of the study, after validating the whole config (errors before anything trains)."""
    checked = check_config(cfg)
    algorithms = list(cfg["maml"]["algorithms"])
    out = []
    for experiment in checked:  # the long runs first (MAML's second-order meta-training), so parallel workers fill up
        config = experiment_config(cfg, experiment, checked)
        for algorithm in algorithms:
            for seed in seeds(cfg):
                out.append(Run(study, "meta_train", {"experiment": experiment, "algorithm": algorithm, "seed": seed},
                               {**config, "algorithm": algorithm, "seed": seed}))
        for seed in seeds(cfg):
            out.append(Run(study, "control", {"experiment": experiment, "seed": seed}, {**config, "seed": seed}))
    return out
