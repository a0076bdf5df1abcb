"""Made-up finished fine-tuning runs of the tiny profile, shaped like the paper's findings or their opposite.

Paper-like: similarity to start falls with depth, more so the less usable the pretrained features
(cross-domain, noisier labels); permuted labels change the top layers as little as the reference;
head-only loses accuracy as the domain shifts. Reversed: similarity rises with depth from a low first
layer, the reference target changes most, head-only wins. Every number gets a small seeded jitter per
run, so the per-seed tests see real spread.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from benchmarks.core.config import load_profile
from benchmarks.core.results import PlanResults
from tests.benchmarks.study_tester import fabricated, row

LAYERS = ["block1", "block2", "block3", "block4", "head"]
TARGETS = ["same", "heldout", "cross", "permuted", "noise-0.25", "noise-0.5", "random"]
MODES = ["head", "full", "lower"]
SEEDS = [0, 1, 2, 3, 4]
MEASURES = ["linear_cka", "rsa_spearman"]  # the tiny profile's measures; the first decides the findings

DEPTH = [0.01, 0.03, 0.08, 0.25, 0.35]  # how much each layer moves away from the start, input side first
DAMAGE = {"same": 0.0, "heldout": 0.3, "cross": 0.9, "permuted": 0.02, "noise-0.25": 0.3, "noise-0.5": 0.6,
          "random": 0.9}
BASE_ACC = {"same": 0.9, "heldout": 0.8, "cross": 0.6, "permuted": 0.9, "noise-0.25": 0.85, "noise-0.5": 0.8,
            "random": 0.2}
SHIFT = {"same": 0.0, "heldout": 0.05, "cross": 0.2}


def tiny_cfg() -> dict:
    cfg = load_profile("finetune", "tiny")
    cfg["profile"] = "tiny"
    cfg["seeds"] = list(SEEDS)
    return cfg


def metrics(target: str, mode: str, seed: int, *, reverse: bool = False,
            damage: dict[str, float] | None = None) -> dict[str, float]:
    """One run's metrics.json (``damage`` overrides the per-target damage of the paper-like world)."""
    rng = np.random.default_rng([seed, zlib.crc32(f"{target}/{mode}".encode())])
    depth, hurt = list(DEPTH), {**DAMAGE, **(damage or {})}[target]
    if reverse:
        depth, hurt = [0.5, *reversed(DEPTH[1:])], 0.9 - hurt
    cka = {layer: max(0.0, 1.0 - d - hurt * d * 2.5) + rng.normal(0, 0.005) for layer, d in zip(LAYERS, depth)}
    shift = SHIFT.get(target, 0.0)
    gains = {"head": shift, "full": -0.01, "lower": shift / 2 - 0.05} if reverse else \
        {"head": -shift, "full": 0.01, "lower": -shift / 2}
    acc = BASE_ACC[target] + gains[mode] + rng.normal(0, 0.005)
    return {"test_acc": acc, "train_acc": acc, "label_agreement": 1.0, "trainable_groups": 5.0,
            "frozen_params_changed": 0.0,
            **{f"{measure}.start.{k}": v for measure in MEASURES for k, v in cka.items()},
            **{f"{measure}.random_init.{k}": 0.2 for measure in MEASURES for k in LAYERS},
            **{f"depth.{k}": float(i) for i, k in enumerate(LAYERS)}}


def results(tmp_path: Path, *, reverse: bool = False, damage: dict[str, float] | None = None,
            targets=TARGETS, seeds=SEEDS, head_policy: str = "keep") -> PlanResults:
    """PlanResults of one pretraining run per seed and every target x mode x seed fine-tuning run."""
    cfg = tiny_cfg()
    cfg["finetune"]["targets"] = list(targets)
    cfg["finetune"]["head_policy"] = head_policy
    runs = [row("pretrain", {"seed": s}, {"source_test_acc": 0.9, "source_train_acc": 0.95},
                tmp_path / f"pretrain_{s}", config=cfg) for s in seeds]
    runs += [row("finetune", {"target": t, "mode": m, "seed": s},
                 metrics(t, m, s, reverse=reverse, damage=damage), tmp_path / f"{t}_{m}_{s}", config=cfg)
             for t in targets for m in MODES for s in seeds]
    return fabricated("finetune", cfg, runs, root=tmp_path)


def for_finding(finding_id: str, holds: bool, tmp_path: Path) -> PlanResults:
    """Runs under which ``finding_id`` holds (the paper-like world) or does not hold."""
    if holds:
        return results(tmp_path)
    if finding_id == "permuted_kept":  # permuted labels wreck the top layers like random labels do
        return results(tmp_path, damage={"permuted": DAMAGE["random"]})
    return results(tmp_path, reverse=True)
