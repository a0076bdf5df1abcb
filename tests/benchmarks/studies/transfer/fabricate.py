"""Fabricated finished runs of the transfer study's plan: every finding holds, or every finding is reversed."""

from __future__ import annotations

from pathlib import Path

from benchmarks.core.runner import resolve_config
from benchmarks.studies.transfer.study import TransferStudy
from tests.benchmarks.study_tester import fabricated, row

LAYERS = ("block1", "block2", "block3", "block4", "head")


def fabricated_cfg() -> dict:
    """The smoke profile with three seeds: enough for a one-sided t-test per seed (n=3)."""
    return resolve_config("transfer", "smoke", ["seeds=[0, 1, 2]", "checkpoints.seeds=[0, 1, 2]"])


def metrics(run, holds: bool) -> dict:
    """Numbers for one run under which every finding holds (holds=True) or is reversed (holds=False)."""
    p = run.params
    seed = p.get("seed", 0)
    jitter = 0.002 * seed
    sign = 1.0 if holds else -1.0
    if run.stage == "pretrain":
        return {"source_acc@0": 0.1, "source_acc@2": 0.7, "source_acc@4": 0.8}
    if run.stage == "train":
        size = run.config["source"]["image_size"]
        # P-T gains 0.05 + slope * block / size: positive everywhere, larger for bigger blocks (reversed: a loss)
        gain = sign * (0.05 + (0.1 + 0.01 * seed) * p["block"] / size)
        pt = p["init"] == "pretrained"
        return {"test_acc": 0.6 + (gain + jitter if pt else 0.0),
                "speed_train_acc": 0.4 + (sign * 0.1 + jitter if pt else 0.0)}
    if run.stage == "pairs":
        out = {}
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
                out[f"error_barrier/{kind}/{pair}"] = barrier + j
                out[f"loss_barrier/{kind}/{pair}"] = 3 * barrier + j
                out[f"min_acc/{kind}/{pair}"] = 0.8 - barrier
                out[f"end_acc/{kind}/{pair}"] = 0.8
        return out
    if run.stage == "criticality":
        out = {}
        for depth, layer in enumerate(LAYERS):
            order = depth if holds else len(LAYERS) - 1 - depth
            out[f"depth/{layer}"] = depth
            out[f"criticality/{layer}"] = 10.0 ** order * (1 + jitter)
            out[f"rewind_error/{layer}"] = 0.1 * order
        return out
    if run.stage == "checkpoint":
        # the intact P-T run (the last checkpoint) scores 0.6 + 0.15 + 0.002 seed (+0.01 seed for the slope);
        # earlier checkpoints match it (reversed: fall 0.2 short of it)
        intact = 0.6 + sign * (0.05 + 0.1 + 0.01 * seed) + jitter
        return {"test_acc": intact + (0.001 * seed if holds else -0.2 - 0.001 * seed), "speed_train_acc": 0.4}
    raise AssertionError(f"no fabricated metrics for stage {run.stage}")


def plan_rows(cfg: dict, holds: bool, root: Path, stages: tuple[str, ...] | None = None) -> list[dict]:
    """Run-store rows for the planned runs (of ``stages``, default all), with fabricated metrics."""
    return [row(run.stage, run.params, {**metrics(run, holds), "wall_seconds": 1.0}, root / run.key, run.config,
                run.key)
            for run in TransferStudy().plan(cfg) if stages is None or run.stage in stages]


def fabricate_results(holds: bool, root: Path, stages: tuple[str, ...] | None = None):
    cfg = fabricated_cfg()
    return fabricated("transfer", cfg, plan_rows(cfg, holds, root, stages), root=root)
