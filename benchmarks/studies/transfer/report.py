"""Report of the what-is-transferred study: tables and figures like the paper's, and the findings.

The core (benchmarks/core/pipeline.py) decides the findings from the finished runs of the current
plan, writes findings.json, then calls ``write_report``: ``report.md``, ``figures/`` and
``summary.csv`` in the study's store directory. Nothing here trains, loads a checkpoint or decides
a verdict.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.core.report import (
    figure,
    findings_section,
    header,
    save_figure,
    table,
    terminal_table,
    write_csv,
)
from benchmarks.core.runstore import atomic_write_text
from benchmarks.core.stats import mean_ci, paired
from benchmarks.studies.transfer.figures import (
    accuracy_figure,
    checkpoint_figure,
    cka_figure,
    criticality_figure,
    interpolation_figure,
    speed_figure,
)
from benchmarks.studies.transfer.protocol import ARM_LABEL, BARRIER_MARGIN, BARRIER_METRIC, PAIR_KINDS, STAGES
from benchmarks.studies.transfer.results import (
    block_label,
    checkpoint_accuracy,
    chosen_lrs,
    criticality_table,
    depth_order,
    intact_block,
    pair_label,
    pair_layers,
    pair_values,
    train_runs,
    train_table,
)

TITLE = "What is being transferred? (study 4: Neyshabur, Sedghi & Zhang, NeurIPS 2020)"
BLOCK_HEADERS = ["source", "block size b", "P-T test acc", "R-T test acc", "P-T - R-T", "speed P-T - R-T",
                 "lr P-T/R-T", "runs P-T/R-T"]
LR_HEADERS = ["source", "block size b", "arm", "learning rate", "val acc (choice)", "test acc", "runs", "chosen"]
BARRIER_HEADERS = ["pair", "loss barrier", "error barrier", "lowest accuracy on the path", "end-point accuracy",
                   "pairs"]
CRITICALITY_HEADERS = ["module", "criticality P-T (median)", "criticality R-T (median)", "P-T per seed",
                       "R-T per seed", "‖θf-θ0‖ P-T", "‖θf-θ0‖ R-T"]
CHECKPOINT_HEADERS = ["pretraining step", "source accuracy", "downstream val acc", "downstream test acc",
                      "downstream speed", "runs", "role"]


def cell(values) -> str:
    """Mean and 95% CI over the given values (seeds, or seed pairs), for a descriptive table cell."""
    values = list(values)
    return mean_ci(values).interval() if values else "no runs"


def block_rows(results, source: str) -> list[list[Any]]:
    table_ = train_table(results, source)
    rates = chosen_lrs(results, source)
    size = intact_block(results.cfg, source)
    rows = []
    for block in sorted(table_):
        pt, rt = table_[block].get("pretrained", {}), table_[block].get("random", {})
        acc = paired({s: m["test_acc"] for s, m in pt.items()}, {s: m["test_acc"] for s, m in rt.items()})
        speed = paired({s: m["speed_train_acc"] for s, m in pt.items()},
                       {s: m["speed_train_acc"] for s, m in rt.items()})
        rows.append([source, block_label(block, size), cell(m["test_acc"] for m in pt.values()),
                     cell(m["test_acc"] for m in rt.values()), cell(acc) if acc else "-",
                     cell(speed) if speed else "-",
                     "/".join(f"{rates[block][a]:g}" if a in rates[block] else "-" for a in ("pretrained", "random")),
                     f"{len(pt)}/{len(rt)}"])
    return rows


def lr_rows(results, source: str) -> list[list[Any]]:
    """Every (block, arm, learning rate) of the shared grid: validation accuracy (what chooses) and test accuracy."""
    runs, rates = train_runs(results, source), chosen_lrs(results, source)
    size = intact_block(results.cfg, source)
    rows = []
    for block in sorted(runs):
        for arm in ("pretrained", "random"):
            for lr, seeds in sorted(runs[block].get(arm, {}).items()):
                rows.append([source, block_label(block, size), ARM_LABEL[arm], f"{lr:g}",
                             cell(m["val_acc"] for m in seeds.values()), cell(m["test_acc"] for m in seeds.values()),
                             len(seeds), "yes" if rates[block].get(arm) == lr else ""])
    return rows


def pair_rows(results, source: str) -> tuple[list[str], list[list[Any]]]:
    layers = pair_layers(results, source)
    rows = []
    for layer in layers:
        row: list[Any] = [layer]
        for measure in ("cka", "l2"):
            row += [cell(pair_values(results, source, measure, kind, layer).values()) for kind in PAIR_KINDS]
        rows.append(row)
    total = ["all weights", "", "", ""] + [cell(pair_values(results, source, "l2", k, "total").values())
                                           for k in PAIR_KINDS]
    buffers = ["BN running statistics (apart)", "", "", ""] + [
        cell(pair_values(results, source, "l2_buffers", k).values()) for k in PAIR_KINDS]
    return layers, rows + [total, buffers]


def barrier_rows(results, source: str) -> list[list[Any]]:
    rows = []
    for kind in PAIR_KINDS:
        values = {p: list(pair_values(results, source, p, kind).values())
                  for p in ("loss_barrier", "error_barrier", "min_acc", "end_acc")}
        rows.append([pair_label(kind)] + [cell(v) for v in values.values()] + [len(values["loss_barrier"])])
    return rows


def criticality_rows(results, source: str) -> list[list[Any]]:
    table_ = criticality_table(results, source)
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
            row.append(", ".join(_crit_text(mods[module].get("criticality", math.nan))
                                 for _, mods in sorted(table_.get(arm, {}).items())) or "-")
        for arm in ("pretrained", "random"):
            row.append(cell(mods[module].get("distance", math.nan) for mods in table_.get(arm, {}).values()))
        rows.append(row)
    return rows


def _crit_text(value: float) -> str:
    return "inf" if value is None or not math.isfinite(value) else f"{value:.3g}"


def checkpoint_rows(results, source: str) -> list[list[Any]]:
    from benchmarks.studies.transfer.train import checkpoint_steps

    table_ = checkpoint_accuracy(results, source)
    last = checkpoint_steps(results.cfg["sources"][source]["pretrain"], intact_block(results.cfg, source))[-1]
    pre = results.where("pretrain", source=source)
    rows = []
    for step in sorted(table_):
        src_acc = pre[0]["metrics"].get(f"source_acc@{step}") if pre else None
        role = "random init (reported apart)" if step == 0 else "last (intact P-T)" if step == last else "earlier"
        rows.append([step, f"{src_acc:.3f}" if src_acc is not None else "-",
                     cell(m["val_acc"] for m in table_[step].values()),
                     cell(m["test_acc"] for m in table_[step].values()),
                     cell(m["speed_train_acc"] for m in table_[step].values()), len(table_[step]), role])
    return rows


def _pairs_dir(results, source: str) -> Path | None:
    runs = results.where("pairs", source=source)
    return Path(runs[0]["dir"]) if runs else None


def build_figures(results, figures_dir: Path) -> dict[str, Path]:
    """Every figure that the finished runs allow, by name."""
    cfg = results.cfg
    out: dict[str, Path] = {}
    for source in cfg["use_sources"]:
        if train_table(results, source):
            out[f"{source}_accuracy"] = save_figure(accuracy_figure(results, source),
                                                    figures_dir / f"{source}_accuracy.png")
            out[f"{source}_speed"] = save_figure(speed_figure(results, source), figures_dir / f"{source}_speed.png")
    for source in cfg["analysis"]["sources"]:
        pairs_dir = _pairs_dir(results, source)
        if pairs_dir is not None and (pairs_dir / "pairs.csv").exists():
            with (pairs_dir / "pairs.csv").open() as handle:
                rows = list(csv.DictReader(handle))
            layers = list(dict.fromkeys(r["layer"] for r in rows))
            out[f"{source}_cka"] = save_figure(cka_figure(rows, layers), figures_dir / f"{source}_cka.png")
            fig = interpolation_figure(pairs_dir, source)
            if fig is not None:
                out[f"{source}_interpolation"] = save_figure(fig, figures_dir / f"{source}_interpolation.png")
        fig = criticality_figure(results, source)
        if fig is not None:
            out[f"{source}_criticality"] = save_figure(fig, figures_dir / f"{source}_criticality.png")
    for source in cfg["checkpoints"]["sources"]:
        fig = checkpoint_figure(results, source)
        if fig is not None:
            out[f"{source}_checkpoints"] = save_figure(fig, figures_dir / f"{source}_checkpoints.png")
    return out


def write_report(study, results, findings: list) -> Path:
    """report.md, figures/ and summary.csv in the study's store directory (``results.root``)."""
    cfg, root = results.cfg, results.root
    figs = build_figures(results, root / "figures")
    lines = [header(TITLE, results), sources_paragraph(cfg, results),
             findings_section(findings, results, study.protocol)]
    lines += ["## 1. Block shuffle: accuracy and training speed vs block size\n",
              "Target images are normalised, then cut into b x b blocks permuted by one fixed permutation per run "
              "(the same for train and test; drawn from seed + 1234); b = 1 is the full pixel shuffle, b = the "
              "image side leaves it intact. No augmentation. Training speed = mean training accuracy over the "
              "first epochs. Cells: mean [95% CI] over seeds at each arm's chosen learning rate; differences are "
              "paired "
              "by seed (R-T runs are shared by sources of one architecture).\n"]
    rows = [row for source in cfg["use_sources"] for row in block_rows(results, source)]
    lines.append(table(BLOCK_HEADERS, rows))
    write_csv(root / "summary.csv", BLOCK_HEADERS, rows)
    lines += ["### Learning rates: the same grid for both arms, chosen on validation\n",
              "Both arms train with the same learning-rate grid and decay schedule "
              f"({_optim_text(cfg)}); for every source, block size and arm the rate with the highest mean final "
              "validation accuracy over seeds is chosen (ties: the smaller rate), and only its runs enter the "
              "findings. Test accuracy never enters the choice.\n",
              table(LR_HEADERS, [row for source in cfg["use_sources"] for row in lr_rows(results, source)])]
    for source in cfg["use_sources"]:
        for name, caption in ((f"{source}_accuracy", f"{source}: final accuracy and training speed vs block size"),
                              (f"{source}_speed", f"{source}: training accuracy per epoch")):
            if name in figs:
                lines.append(figure(figs[name], root, caption))
    for source in cfg["analysis"]["sources"]:
        _, rows = pair_rows(results, source)
        lines += [f"## 2. Feature similarity and weight distance ({source})\n",
                  "Linear CKA (biased HSIC) of each layer's outputs on fixed test images, and the l2 distance "
                  "of the weights, between the final solutions of two runs (intact images), for every two seeds "
                  "i < j: P-T_i/P-T_j, P-T_i/R-T_j, R-T_i/R-T_j, each arm at its chosen intact learning rate. "
                  "The l2 distance covers learned weights only; BatchNorm running statistics are a separate row. "
                  "Cells: mean [95% CI] over seed pairs (descriptive; pairs share runs).\n",
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
                  f"end points' values. The findings use the {BARRIER_METRIC} barrier with the protocol's margin "
                  f"{BARRIER_MARGIN:g}.\n",
                  table(BARRIER_HEADERS, barrier_rows(results, source))]
        if f"{source}_interpolation" in figs:
            lines.append(figure(figs[f"{source}_interpolation"], root, f"{source}: interpolation curves"))
        crit = cfg["analysis"]["criticality"]
        bound = "ε" if crit["bound"] == "absolute" else "its value at θf + ε"
        lines += [f"## 4. Module criticality ({source})\n",
                  "Chatterji, Neyshabur & Sedghi (ICLR 2020), Definition 3.1: for module i, "
                  "μ_i = min over 0 ≤ α ≤ 1, 0 < σ ≤ 1 of α²‖θf_i − θ0_i‖²_F / σ² subject to "
                  "E_{u~N(0,σ²I)} L_S((1−α)θ0_i + αθf_i + u, θf_{−i}) ≤ "
                  f"{bound}, with L_S the training {crit['criterion']} and ε = {crit['epsilon']}. θ0 = the "
                  "pretrained weights with the fresh head for P-T, the random init for R-T; the noise is absolute "
                  "(every weight of the module gets N(0, σ²)); the expectation is the mean over "
                  f"{crit['draws']} draws. "
                  "BatchNorm running statistics are re-estimated on training data at every evaluated point. "
                  f"Grid: α in {crit['alphas']}, σ on {crit['sigma_points']} log-spaced values from "
                  f"{crit['sigma_min']:g} to {crit['sigma_max']:g} ({crit['search']} search: for each α the largest "
                  "passing σ). 0 = the module can be fully rewound to θ0; inf = no grid point passes.\n",
                  table(CRITICALITY_HEADERS, criticality_rows(results, source))]
        if f"{source}_criticality" in figs:
            lines.append(figure(figs[f"{source}_criticality"], root, f"{source}: criticality heatmaps"))
    for source in cfg["checkpoints"]["sources"]:
        lines += [f"## 5. Fine-tuning from pretraining checkpoints ({source})\n",
                  "Downstream training (intact images, the P-T arm's chosen intact learning rate) from source "
                  "weights taken at steps through pretraining. Step 0 is the source's random init: it is reported "
                  "here but excluded from the finding. Of the other earlier steps, the one with the best mean "
                  "validation accuracy is compared with the last (the intact P-T run of section 1) on test.\n",
                  table(CHECKPOINT_HEADERS, checkpoint_rows(results, source))]
        if f"{source}_checkpoints" in figs:
            lines.append(figure(figs[f"{source}_checkpoints"], root, f"{source}: downstream vs checkpoint"))
    lines += ["## Run time by stage\n", table(["stage", "runs", "wall time (min)"], stage_times(results)),
              "Re-run one run alone: `python -m benchmarks rerun results/transfer/<run-key>`; rebuild this "
              "report: `python -m benchmarks report transfer --profile <profile>`.\n"]
    path = root / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


SOURCE_TEXT = {
    "fashion_mnist": "conv4 (width {hidden}, 4 x [conv3x3, BatchNorm, ReLU, maxpool] + linear) pretrained here on {n} "
                     "Fashion-MNIST images for {epochs} epoch(s)",
    "glyphs": "conv4 (width {hidden}, 4 x [conv3x3, BatchNorm, ReLU, maxpool] + linear) pretrained here on every "
              "character of the glyph alphabets of split '{split}' (disjoint from the target's alphabets) for "
              "{epochs} epoch(s)",
    "imagenet": "{backbone} with real ImageNet-1k weights (embedded EfficientNet-Lite0, offline), grey glyphs "
                "repeated to RGB at {size} x {size}, ImageNet normalisation",
}


def _optim_text(cfg: dict) -> str:
    texts = []
    for name in dict.fromkeys(cfg["use_sources"]):
        train = cfg["sources"][name]["train"]
        optim = train["optim"]
        texts.append(f"{name}: {optim['optimizer']} lr in {train['lrs']}, momentum {optim.get('momentum', 0.9)}, "
                     f"weight decay {optim.get('weight_decay', 0.0)}, {optim.get('scheduler') or 'no'} decay over "
                     f"{train['epochs']} epochs")
    return "; ".join(texts)


def sources_paragraph(cfg: dict, results=None) -> str:
    """Which sources this report covers (P-T starts from them, R-T from a random init of the same network)."""
    lines = ["Sources (P-T = source weights with a fresh head, fine-tuned; R-T = the same network from a random "
             "init):"]
    for name in cfg["use_sources"]:
        src = cfg["sources"][name]
        pre = src.get("pretrain", {})
        kind = pre.get("dataset", src["kind"])
        text = SOURCE_TEXT[kind].format(n=pre.get("n_train"), epochs=pre.get("epochs"), hidden=src.get("hidden"),
                                        split=pre.get("alphabet_split"), backbone=src["backbone"],
                                        size=src["image_size"])
        runs = results.where("pretrain", source=name) if results is not None else []
        if runs:
            m = runs[0]["metrics"]
            text += (f" (source test accuracy {m.get('source_acc', math.nan):.3f}, last-epoch train / val accuracy "
                     f"{m.get('source_train_acc', math.nan):.3f} / {m.get('source_val_acc', math.nan):.3f} on "
                     f"{int(m.get('source_classes', 0))} classes)")
        lines.append(f"- `{name}`: {text}; {src['train']['epochs']} downstream epochs.")
    order = cfg.get("domain_distance") or []
    if len(order) >= 2:
        lines.append(f"- distance to the target, nearest first: {' < '.join(order)}.")
    off = [n for n in cfg["sources"] if n not in cfg["use_sources"]]
    if off:
        lines.append(f"- not run in this profile: {', '.join(off)} (add with `--set use_sources=[...]`).")
    target = cfg["target"]
    lines.append(f"\nTarget: {target['classes']} glyph characters, {target['train_per_class']} training / "
                 f"{target['val_per_class']} validation / {target['test_per_class']} test images each (distorted "
                 "renders from different fonts), the same task for every run.\n")
    return "\n".join(lines) + "\n"


def stage_times(results) -> list[list[Any]]:
    out = []
    for stage in STAGES:
        runs = results.stage(stage)
        if runs:
            out.append([stage, len(runs), sum(r["metrics"].get("wall_seconds", 0.0) for r in runs) / 60])
    return out


def summary_lines(results, findings: list) -> list[str]:
    """The block-shuffle table and the verdicts, for the terminal."""
    lines = terminal_table(["source", "block", "P-T acc", "R-T acc", "P-T - R-T", "speed diff", "lr", "runs"],
                           [row for source in results.cfg["use_sources"] for row in block_rows(results, source)])
    lines.append("")
    lines += [f"{f.verdict:>14}  {f.id}: {f.claim}  ({f.effect_text()}, n={f.n})" for f in findings]
    return lines
