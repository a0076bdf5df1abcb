"""Report of the what-is-transferred study: tables, figures like the paper's, verdicts computed from runs.

``write_report`` rebuilds ``results/transfer/report.md`` (+ ``figures/``, ``summary.csv``) from the
finished runs of the current plan at any time; ``log_aggregate`` (the study's last run) also logs the
findings, the accuracy-vs-block-size curves and every figure to W&B.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import figure, findings_table, header, save_figure, table, terminal_table, write_csv
from benchmarks.runstore import RunStore, atomic_write_text
from benchmarks.stats import mean_ci, paired_difference
from benchmarks.transfer_figures import (
    accuracy_figure,
    checkpoint_figure,
    cka_figure,
    criticality_figure,
    interpolation_figure,
    speed_figure,
)
from benchmarks.transfer_findings import findings
from benchmarks.transfer_results import (
    ARM_LABEL,
    PAIR_KINDS,
    Results,
    block_label,
    checkpoint_accuracy,
    collect,
    criticality_table,
    depth_order,
    fmt,
    intact_block,
    pair_label,
    paired,
    scalar_pairs,
)

BLOCK_HEADERS = ["source", "block size b", "P-T test acc", "R-T test acc", "P-T - R-T", "speed P-T - R-T",
                 "runs P-T/R-T"]
BARRIER_HEADERS = ["pair", "loss barrier", "error barrier", "lowest accuracy on the path", "end-point accuracy",
                   "pairs"]
CRITICALITY_HEADERS = ["module", "criticality P-T (median)", "criticality R-T (median)", "rewind error P-T",
                       "rewind error R-T"]
CHECKPOINT_HEADERS = ["pretraining step", "source accuracy", "downstream test acc", "downstream speed", "runs"]
VERDICT_CODE = {"holds": 1.0, "inconclusive": 0.0, "does not hold": -1.0}


def block_rows(res: Results, source: str) -> list[list[Any]]:
    table_ = res.train(source)
    size = intact_block(res.cfg, source)
    rows = []
    for block in sorted(table_):
        pt, rt = table_[block].get("pretrained", {}), table_[block].get("random", {})
        a, b = paired({s: m["test_acc"] for s, m in pt.items()}, {s: m["test_acc"] for s, m in rt.items()})
        sa, sb = paired({s: m["speed_train_acc"] for s, m in pt.items()},
                        {s: m["speed_train_acc"] for s, m in rt.items()})
        rows.append([source, block_label(block, size), fmt(mean_ci([m["test_acc"] for m in pt.values()])),
                     fmt(mean_ci([m["test_acc"] for m in rt.values()])),
                     fmt(paired_difference(a, b), True) if a else "-",
                     fmt(paired_difference(sa, sb), True) if sa else "-", f"{len(pt)}/{len(rt)}"])
    return rows


def pair_rows(res: Results, source: str) -> tuple[list[str], list[list[Any]]]:
    layers: list[str] = []
    for r in res.stage("pairs"):
        if r["params"]["source"] == source:
            for key in r["metrics"]:
                parts = key.split("/")
                if parts[0] == "cka" and parts[3] not in layers:
                    layers.append(parts[3])
    rows = []
    for layer in layers:
        row: list[Any] = [layer]
        for kind in PAIR_KINDS:
            row.append(fmt(mean_ci(list(scalar_pairs(res, source, "cka", kind, layer).values()))))
        for kind in PAIR_KINDS:
            row.append(fmt(mean_ci(list(scalar_pairs(res, source, "l2", kind, layer).values()))))
        rows.append(row)
    total = ["all weights", "", "", ""] + [fmt(mean_ci(list(scalar_pairs(res, source, "l2", k, "total").values())))
                                           for k in PAIR_KINDS]
    return layers, rows + [total]


def barrier_rows(res: Results, source: str) -> list[list[Any]]:
    rows = []
    for kind in PAIR_KINDS:
        values = {p: list(scalar_pairs(res, source, p, kind).values())
                  for p in ("loss_barrier", "error_barrier", "min_acc", "end_acc")}
        rows.append([pair_label(kind)] + [fmt(mean_ci(v)) for v in values.values()]
                    + [len(values["loss_barrier"])])
    return rows


def criticality_rows(res: Results, source: str) -> list[list[Any]]:
    table_ = criticality_table(res, source)
    modules: list[str] = []
    for seeds in table_.values():
        for mods in seeds.values():
            modules = depth_order(mods)
            break
    rows = []
    for module in modules:
        row: list[Any] = [module]
        for arm in ("pretrained", "random"):
            values = [mods[module].get("criticality", math.nan) for mods in table_.get(arm, {}).values()]
            row.append(f"{np.median(values):.3g}" if values else "-")
        for arm in ("pretrained", "random"):
            values = [mods[module].get("rewind_error", math.nan) for mods in table_.get(arm, {}).values()]
            row.append(fmt(mean_ci(values)))
        rows.append(row)
    return rows


def checkpoint_rows(res: Results, source: str) -> list[list[Any]]:
    table_ = checkpoint_accuracy(res, source)
    pre = [r for r in res.stage("pretrain") if r["params"]["source"] == source]
    rows = []
    for step in sorted(table_):
        src_acc = pre[0]["metrics"].get(f"source_acc@{step}") if pre else None
        rows.append([step, f"{src_acc:.3f}" if src_acc is not None else "-",
                     fmt(mean_ci([m["test_acc"] for m in table_[step].values()])),
                     fmt(mean_ci([m["speed_train_acc"] for m in table_[step].values()])), len(table_[step])])
    return rows


def _pairs_dir(res: Results, source: str) -> Path | None:
    for r in res.stage("pairs"):
        if r["params"]["source"] == source:
            return Path(r["dir"])
    return None


def build_figures(res: Results, figures_dir: Path) -> dict[str, Path]:
    """Every figure that the finished runs allow, by name."""
    out: dict[str, Path] = {}
    for source in res.cfg["use_sources"]:
        if res.train(source):
            out[f"{source}_accuracy"] = save_figure(accuracy_figure(res, source),
                                                    figures_dir / f"{source}_accuracy.png")
            out[f"{source}_speed"] = save_figure(speed_figure(res, source), figures_dir / f"{source}_speed.png")
    for source in res.cfg["analysis"]["sources"]:
        pairs_dir = _pairs_dir(res, source)
        if pairs_dir is not None and (pairs_dir / "pairs.csv").exists():
            import csv

            rows = list(csv.DictReader((pairs_dir / "pairs.csv").open()))
            layers = list(dict.fromkeys(r["layer"] for r in rows))
            out[f"{source}_cka"] = save_figure(cka_figure(rows, layers), figures_dir / f"{source}_cka.png")
            fig = interpolation_figure(pairs_dir, source)
            if fig is not None:
                out[f"{source}_interpolation"] = save_figure(fig, figures_dir / f"{source}_interpolation.png")
        fig = criticality_figure(res, source)
        if fig is not None:
            out[f"{source}_criticality"] = save_figure(fig, figures_dir / f"{source}_criticality.png")
    for source in res.cfg["checkpoints"]["sources"]:
        fig = checkpoint_figure(res, source)
        if fig is not None:
            out[f"{source}_checkpoints"] = save_figure(fig, figures_dir / f"{source}_checkpoints.png")
    return out




def write_report(study, cfg: dict, store: RunStore) -> Path:
    res = collect(study, cfg, store)
    root = store.root
    figs = build_figures(res, root / "figures")
    found = findings(res)
    lines = [header("What is being transferred? (study 4: Neyshabur, Sedghi & Zhang, NeurIPS 2020)", cfg, res.runs)]
    lines += [f"{len(res.runs)} of {res.planned} planned runs have finished.\n", sources_paragraph(cfg),
              "## Findings\n",
              findings_table(found),
              "Verdicts come from the runs: **holds** when the 95% CI of the effect lies on the claimed side, "
              "**does not hold** when it lies on the other side, **inconclusive** otherwise (CIs are Student-t "
              "over seeds; seed pairs share runs, so their CIs are optimistic).\n"]
    lines += ["## 1. Block shuffle: accuracy and training speed vs block size\n",
              "Target images are normalised, then cut into b x b blocks permuted by one fixed permutation per run "
              "(the same for train and test; drawn from seed + 1234); b = 1 is the full pixel shuffle, b = the "
              "image side leaves it intact. No augmentation. Training speed = mean training accuracy over the "
              "first epochs.\n"]
    rows = [row for source in cfg["use_sources"] for row in block_rows(res, source)]
    lines.append(table(BLOCK_HEADERS, rows))
    write_csv(root / "summary.csv", BLOCK_HEADERS, rows)
    for source in cfg["use_sources"]:
        for name, caption in ((f"{source}_accuracy", f"{source}: final accuracy and training speed vs block size"),
                              (f"{source}_speed", f"{source}: training accuracy per epoch")):
            if name in figs:
                lines.append(figure(figs[name], root, caption))
    for source in cfg["analysis"]["sources"]:
        layers, rows = pair_rows(res, source)
        lines += [f"## 2. Feature similarity and weight distance ({source})\n",
                  "Linear CKA (biased HSIC) of each layer's outputs on fixed test images, and the l2 distance "
                  "of the weights, between the final solutions of two runs (intact images), for every two seeds "
                  "i < j: P-T_i/P-T_j, P-T_i/R-T_j, R-T_i/R-T_j.\n",
                  table(["layer"] + [f"{measure} {pair_label(k)}" for measure in ("CKA", "l2") for k in PAIR_KINDS],
                        rows)]
        if f"{source}_cka" in figs:
            lines.append(figure(figs[f"{source}_cka"], root, f"{source}: CKA and l2 distance per layer"))
        lambdas = cfg["analysis"]["lambdas"]
        bn = cfg["analysis"]["bn_batches"]
        lines += [f"## 3. Performance barriers ({source})\n",
                  f"All weights are interpolated, θ(λ) = (1-λ)θ_a + λθ_b, at {lambdas} evenly spaced λ; "
                  "**BatchNorm running statistics are recomputed at every λ** (reset, then a cumulative average "
                  f"over {'all' if bn is None else bn} training batches in train mode) before the test set is "
                  "evaluated. Barrier = max over λ of the test loss (error) minus the straight line between the "
                  f"end points' values. The findings use the {cfg['findings']['barrier_metric']} barrier with margin "
                  f"{cfg['findings']['barrier_margin']}.\n",
                  table(BARRIER_HEADERS, barrier_rows(res, source))]
        if f"{source}_interpolation" in figs:
            lines.append(figure(figs[f"{source}_interpolation"], root, f"{source}: interpolation curves"))
        crit = cfg["analysis"]["criticality"]
        lines += [f"## 4. Module criticality ({source})\n",
                  "One layer group's weights are moved to (1-α)θ0 + αθf plus Gaussian noise "
                  f"({crit['noise']} σ, {crit['draws']} draws), the rest stay at θf (θ0 = pretrained weights with "
                  "the fresh head for P-T, the random init for R-T). Criticality = the smallest α²‖θf-θ0‖²/σ² "
                  f"over α in {crit['alphas']}, σ in {crit['sigmas']} whose training {crit['criterion']} stays "
                  f"within ε = {crit['epsilon']} of its value at θf (0: the module can be rewound to θ0). "
                  "Rewind error = training error with the module fully reset to θ0.\n",
                  table(CRITICALITY_HEADERS, criticality_rows(res, source))]
        if f"{source}_criticality" in figs:
            lines.append(figure(figs[f"{source}_criticality"], root, f"{source}: criticality heatmaps"))
    for source in cfg["checkpoints"]["sources"]:
        lines += [f"## 5. Fine-tuning from pretraining checkpoints ({source})\n",
                  "Downstream training (intact images) from source weights taken at steps through pretraining "
                  "(step 0 = the source init; the last step is the intact P-T run of section 1).\n",
                  table(CHECKPOINT_HEADERS, checkpoint_rows(res, source))]
        if f"{source}_checkpoints" in figs:
            lines.append(figure(figs[f"{source}_checkpoints"], root, f"{source}: downstream vs checkpoint"))
    lines += ["## Run time by stage\n", table(["stage", "runs", "wall time (min)"], stage_times(res)),
              "Re-run one run alone: `python -m benchmarks rerun results/transfer/<run-key>`; rebuild this "
              "report: `python -m benchmarks report transfer --profile <profile>`.\n"]
    path = root / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


SOURCE_TEXT = {
    "conv4": "conv4 (4 x [conv3x3, BatchNorm, ReLU, maxpool] + linear) pretrained here on {n} Fashion-MNIST images "
             "for {epochs} epoch(s)",
    "imagenet": "{backbone} with real ImageNet-1k weights (embedded EfficientNet-Lite0, offline), grey glyphs "
                "repeated to RGB at {size} x {size}, ImageNet normalisation",
}


def sources_paragraph(cfg: dict) -> str:
    """Which sources this report covers (P-T starts from them, R-T from a random init of the same network)."""
    lines = ["Sources (P-T = source weights with a fresh head, fine-tuned; R-T = the same network from a random "
             "init):"]
    for name in cfg["use_sources"]:
        src = cfg["sources"][name]
        pre = src.get("pretrain", {})
        text = SOURCE_TEXT[src["kind"]].format(n=pre.get("n_train"), epochs=pre.get("epochs"),
                                               backbone=src["backbone"], size=src["image_size"])
        lines.append(f"- `{name}`: {text}; {src['train']['epochs']} downstream epochs.")
    off = [n for n in cfg["sources"] if n not in cfg["use_sources"]]
    if off:
        lines.append(f"- not run in this profile: {', '.join(off)} (add with `--set use_sources=[...]`).")
    target = cfg["target"]
    lines.append(f"\nTarget: {target['classes']} glyph characters, {target['train_per_class']} training / "
                 f"{target['val_per_class']} validation / {target['test_per_class']} test images each (distorted "
                 "renders from different fonts), the same task for every run.\n")
    return "\n".join(lines) + "\n"


def stage_times(res: Results) -> list[list[Any]]:
    out = []
    for stage in ("pretrain", "train", "pairs", "criticality", "checkpoint", "aggregate"):
        runs = res.stage(stage)
        if runs:
            out.append([stage, len(runs), sum(r["metrics"].get("wall_seconds", 0.0) for r in runs) / 60])
    return out


def summary_lines(study, cfg: dict, store: RunStore) -> list[str]:
    res = collect(study, cfg, store)
    lines = terminal_table(["source", "block", "P-T acc", "R-T acc", "P-T - R-T", "speed diff", "runs"],
                           [row for source in cfg["use_sources"] for row in block_rows(res, source)])
    lines.append("")
    lines += [f"{f.verdict:>14}  {f.claim}  ({f.effect})" for f in findings(res)]
    return lines


# ============================================================================================ W&B


def _wandb_table(columns: list[str], rows: list[list[Any]]):
    import wandb

    return wandb.Table(columns=columns, data=[[str(v) for v in row] for row in rows])


def log_aggregate(study, run, ctx) -> dict[str, float]:
    """The aggregate run: write the report, log its tables, figures and verdicts to W&B (rank 0 only)."""
    import wandb

    from benchmarks.study import global_rank

    if global_rank() != 0:  # under DDP the other ranks have nothing to add; the runner keeps rank 0's metrics
        return {}
    cfg = run.config["study_config"]
    path = write_report(study, cfg, ctx.store)
    res = collect(study, cfg, ctx.store)
    found = findings(res)
    experiment = ctx.loggers()[0].experiment
    tables = {
        "findings": _wandb_table(["finding", "verdict", "effect", "n", "detail"],
                                 [[f.claim, f.verdict, f.effect, f.n, f.detail] for f in found]),
        "block/table": _wandb_table(BLOCK_HEADERS, [row for s in cfg["use_sources"] for row in block_rows(res, s)]),
    }
    for source in cfg["analysis"]["sources"]:
        tables[f"barriers/{source}"] = _wandb_table(BARRIER_HEADERS, barrier_rows(res, source))
        tables[f"criticality/{source}"] = _wandb_table(CRITICALITY_HEADERS, criticality_rows(res, source))
    for source in cfg["checkpoints"]["sources"]:
        tables[f"checkpoints/{source}"] = _wandb_table(CHECKPOINT_HEADERS, checkpoint_rows(res, source))
    experiment.log(tables)
    # accuracy and training speed against the block size, on their own x-axis
    experiment.define_metric("block/size")
    experiment.define_metric("block/*", step_metric="block/size")
    for source in cfg["use_sources"]:
        table_ = res.train(source)
        for block in sorted(table_):
            row: dict[str, float] = {"block/size": block}
            for arm in ("pretrained", "random"):
                for key in ("test_acc", "speed_train_acc"):
                    values = [m[key] for m in table_[block].get(arm, {}).values()]
                    if values:
                        row[f"block/{source}/{ARM_LABEL[arm]}/{key}"] = float(np.mean(values))
            experiment.log(row)
    for name in sorted((path.parent / "figures").glob("*.png")):
        experiment.log({f"figures/{name.stem}": wandb.Image(str(name))})
    experiment.summary.update({f"verdict/{i}": f.verdict for i, f in enumerate(found)})
    return {f"verdict/{i}": VERDICT_CODE[f.verdict] for i, f in enumerate(found)}
