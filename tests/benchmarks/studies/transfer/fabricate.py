"""Fabricated finished runs of the transfer study's plan: every finding holds, or every finding is reversed.

The smoke plan with three seeds: the near source ``glyphs`` at blocks 1 and 28, the far source ``fmnist`` intact
only, R-T runs shared (kept under ``glyphs``), two learning rates per arm. P-T's validation accuracy is best at
0.05 and R-T's at 0.02; the other rate of each arm gets a test accuracy that would reverse every block finding,
so the findings hold (or fail) only if the choice is made on validation.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.core.runner import resolve_config
from benchmarks.studies.transfer.study import TransferStudy
from tests.benchmarks.study_tester import fabricated, row

LAYERS = ("block1", "block2", "block3", "block4", "head")
CHOSEN = {"pretrained": 0.05, "random": 0.02}  # each arm's rate with the better validation accuracy


def fabricated_cfg() -> dict:
    """The smoke profile with three seeds: enough for a one-sided t-test per seed (n=3)."""
    return resolve_config("transfer", "smoke", ["seeds=[0, 1, 2]", "checkpoints.seeds=[0, 1, 2]"])


def pt_gain(source: str, block: int, size: int, seed: int, sign: float) -> float:
    """P-T minus R-T test accuracy: near source 0.05 + slope * b / side (larger for bigger blocks); far: 0.02."""
    if source == "fmnist":
        return sign * (0.02 + 0.003 * seed)
    return sign * (0.05 + (0.1 + 0.01 * seed) * block / size)


def train_metrics(run, holds: bool) -> dict:
    p = run.params
    seed, sign, pt = p["seed"], 1.0 if holds else -1.0, p["init"] == "pretrained"
    size = run.config["source"]["image_size"]
    jitter = 0.002 * seed
    test = 0.6 + (pt_gain(p["source"], p["block"], size, seed, sign) + jitter if pt else 0.0)
    speed = 0.4 + (sign * 0.1 + jitter if pt else 0.0)
    chosen = p["lr"] == CHOSEN[p["init"]]
    if not chosen:  # worse on validation; its test numbers would reverse the findings if it were picked
        return {"val_acc": 0.3, "test_acc": 0.6 - (test - 0.6), "speed_train_acc": 0.4 - (speed - 0.4),
                "lr": p["lr"]}
    return {"val_acc": 0.7 + jitter, "test_acc": test, "speed_train_acc": speed, "lr": p["lr"]}


def metrics(run, holds: bool) -> dict:
    """Numbers for one run under which every finding holds (holds=True) or is reversed (holds=False)."""
    p = run.params
    seed = p.get("seed", 0)
    jitter = 0.002 * seed
    sign = 1.0 if holds else -1.0
    if run.stage == "pretrain":
        return {"source_acc@0": 0.01, "source_acc@2": 0.5, "source_acc@4": 0.8, "source_acc": 0.8,
                "source_val_acc": 0.8, "source_train_acc": 0.9, "source_classes": 50}
    if run.stage == "train":
        return train_metrics(run, holds)
    if run.stage == "pairs":
        out = {"lr/pretrained": CHOSEN["pretrained"], "lr/random": CHOSEN["random"]}
        for index, pair in enumerate(("0-1", "0-2", "1-2")):
            for kind, cka, l2, barrier in (("PT-PT", 0.9, 3.0, 0.01), ("PT-RT", 0.5, 15.0, 0.4),
                                           ("RT-RT", 0.6, 14.0, 0.5)):
                j = 0.004 * index * (2 if kind == "RT-RT" else 1)  # differences between kinds vary by pair
                if not holds and kind != "PT-RT":
                    cka, l2, barrier = {"PT-PT": (0.5, 20.0, 0.5), "RT-RT": (0.9, 3.0, 0.01)}[kind]
                for layer in LAYERS:
                    out[f"cka/{kind}/{pair}/{layer}"] = cka + j
                    out[f"l2/{kind}/{pair}/{layer}"] = l2 / 3 + j
                out[f"l2/{kind}/{pair}/total"] = l2 + j
                out[f"l2_buffers/{kind}/{pair}"] = 1.0
                out[f"error_barrier/{kind}/{pair}"] = barrier + j
                out[f"loss_barrier/{kind}/{pair}"] = 3 * barrier + j
                out[f"min_acc/{kind}/{pair}"] = 0.8 - barrier
                out[f"end_acc/{kind}/{pair}"] = 0.8
        return out
    if run.stage == "criticality":
        out = {"reference_error": 0.0, "lr": CHOSEN[p["init"]]}
        for depth, layer in enumerate(LAYERS):
            order = depth if holds else len(LAYERS) - 1 - depth
            out[f"depth/{layer}"] = depth
            out[f"criticality/{layer}"] = 10.0 ** order * (1 + jitter)
            out[f"distance/{layer}"] = 1.0 + depth
        return out
    if run.stage == "checkpoint":
        # the intact P-T run (the last checkpoint) scores 0.6 + 0.15 + 0.01 seed + 0.002 seed. The earlier step 2
        # matches it (reversed: falls 0.2 short of it). The random init (step 0) looks best on validation but is
        # poor on test: counted, it would reverse the finding, so it must be excluded.
        intact = 0.6 + sign * (0.05 + 0.1 + 0.01 * seed) + jitter
        if p["step"] == 0:
            return {"val_acc": 0.99, "test_acc": intact + (-0.3 if holds else 0.3), "speed_train_acc": 0.4}
        return {"val_acc": 0.7, "test_acc": intact + (0.001 * seed if holds else -0.2 - 0.001 * seed),
                "speed_train_acc": 0.4}
    raise AssertionError(f"no fabricated metrics for stage {run.stage}")


def plan_rows(cfg: dict, holds: bool, root: Path, stages: tuple[str, ...] | None = None) -> list[dict]:
    """Run-store rows for the planned runs (of ``stages``, default all), with fabricated metrics."""
    return [row(run.stage, run.params, {**metrics(run, holds), "wall_seconds": 1.0}, root / run.key, run.config,
                run.key)
            for run in TransferStudy().plan(cfg) if stages is None or run.stage in stages]


def fabricate_results(holds: bool, root: Path, stages: tuple[str, ...] | None = None):
    cfg = fabricated_cfg()
    return fabricated("transfer", cfg, plan_rows(cfg, holds, root, stages), root=root)
