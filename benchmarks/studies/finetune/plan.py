"""The fine-tuning study's plan: one ``pretrain`` run per seed, then target x mode fine-tuning runs of that seed.

The config is validated first (protocol.validate), so a bad value stops the command before any
training. Run configs hold the profile's values as written, so run keys stay stable.
"""

from __future__ import annotations

from benchmarks.core.study import Run
from benchmarks.studies.finetune.protocol import FULLSCALE, validate


def plan_runs(study: str, cfg: dict) -> list[Run]:
    settings = validate(cfg)
    common = {"model": cfg["model"], "source": cfg["source"], "similarity": cfg["similarity"]}
    if any(spec["dataset"] in FULLSCALE for spec in [cfg["source"], *settings.specs.values()]):
        common["data_root"] = cfg.get("data_root")
    pretrain = {seed: Run(study, "pretrain", {"seed": seed}, {**common, "seed": seed}) for seed in settings.seeds}
    finetune_cfg = {k: v for k, v in cfg["finetune"].items() if k not in ("modes", "targets")}
    runs = list(pretrain.values())
    for seed in settings.seeds:
        for target in settings.targets:
            for mode in settings.modes:
                config = {**common, "seed": seed, "finetune": {**finetune_cfg, "mode": mode},
                          "target": {"name": target, **cfg["targets"][target]}}
                params = {"target": target, "mode": mode, "seed": seed}
                runs.append(Run(study, "finetune", params, config, needs=(pretrain[seed].key,)))
    return runs
