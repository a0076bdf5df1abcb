"""Figures of the what-is-transferred report, after the paper's: accuracy vs block size, training speed,
CKA and l2 bars per layer, interpolation curves with the barrier marked, criticality heatmaps, and
downstream accuracy vs pretraining checkpoint. Drawn off-screen (Agg), returned as matplotlib Figures.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.core.stats import mean_ci
from benchmarks.studies.transfer.protocol import ARM_LABEL, PAIR_KINDS
from benchmarks.studies.transfer.results import block_label, checkpoint_accuracy, intact_block, pair_label, train_table

COLOURS = {"pretrained": "tab:blue", "random": "tab:orange", "PT-PT": "tab:blue", "PT-RT": "tab:green",
           "RT-RT": "tab:orange"}


def new_figure(width: float, height: float):
    """An off-screen figure with constrained layout (labels and colour bars do not overlap)."""
    from callbacks.plots import new_figure as _new

    fig = _new(width, height)
    fig.set_layout_engine("constrained")
    return fig


def accuracy_figure(res, source: str):
    """Paper's figure 2: final test accuracy vs block size (P-T vs R-T) and training speed."""
    table_ = train_table(res, source)
    size = intact_block(res.cfg, source)
    blocks = sorted(table_)
    fig = new_figure(11, 4)
    speed_epochs = res.cfg["sources"][source]["train"]["speed_epochs"]
    panels = (("test_acc", "final test accuracy"),
              ("speed_train_acc", f"training speed: mean train accuracy, first {speed_epochs} epochs"))
    for index, (key, label) in enumerate(panels):
        ax = fig.add_subplot(1, 2, index + 1)
        for arm in ("pretrained", "random"):
            est = [mean_ci([m[key] for m in table_[b].get(arm, {}).values()]) for b in blocks]
            xs = [b for b, e in zip(blocks, est) if e.n]
            means = np.array([e.mean for e in est if e.n])
            low = np.clip([e.low if e.n > 1 else e.mean for e in est if e.n], 0.0, 1.0)
            high = np.clip([e.high if e.n > 1 else e.mean for e in est if e.n], 0.0, 1.0)
            ax.plot(xs, means, marker="o", color=COLOURS[arm], label=ARM_LABEL[arm])
            ax.fill_between(xs, low, high, color=COLOURS[arm], alpha=0.2)
        ax.set_xscale("log", base=2)
        ax.set_xticks(blocks, [block_label(b, size).replace(" (", "\n(") for b in blocks], fontsize=7)
        ax.set_xlabel("block size b (pixels)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{source}: accuracy vs block size (mean, 95% CI over seeds)")
    return fig


def speed_figure(res, source: str):
    """Training accuracy per epoch, P-T vs R-T, for the intact images and the smallest blocks."""
    table_ = train_table(res, source)
    size = intact_block(res.cfg, source)
    blocks = sorted({size, min(table_)}) if table_ else []
    fig = new_figure(5.5 * max(1, len(blocks)), 3.8)
    for index, block in enumerate(blocks):
        ax = fig.add_subplot(1, len(blocks), index + 1)
        for arm in ("pretrained", "random"):
            curves = []
            for metrics in table_[block].get(arm, {}).values():
                path = Path(metrics["_dir"]) / "history.json"
                if path.exists():
                    rows = json.loads(path.read_text())
                    curves.append([r.get("train_acc", math.nan) for r in rows])
            if not curves:
                continue
            length = min(len(c) for c in curves)
            data = np.array([c[:length] for c in curves])
            epochs = np.arange(1, length + 1)
            ax.plot(epochs, data.mean(0), color=COLOURS[arm], label=f"{ARM_LABEL[arm]} train")
            ax.fill_between(epochs, data.min(0), data.max(0), color=COLOURS[arm], alpha=0.2)
        ax.set_title(f"b = {block_label(block, size)}", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("training accuracy")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"{source}: training speed (mean, band = min..max over seeds)")
    return fig


def cka_figure(rows: Sequence[Mapping[str, Any]], layers: Sequence[str]):
    """Paper's figure 4: per-layer CKA bars and weight l2 distance for the three pair kinds."""
    fig = new_figure(11, 3.8)
    for index, (key, label) in enumerate((("cka", "linear CKA"), ("l2", "l2 distance of weights"))):
        ax = fig.add_subplot(1, 2, index + 1)
        width = 0.8 / len(PAIR_KINDS)
        for k, kind in enumerate(PAIR_KINDS):
            means, errs = [], []
            for layer in layers:
                values = [float(r[key]) for r in rows if r["kind"] == kind and r["layer"] == layer]
                est = mean_ci(values)
                means.append(est.mean if est.n else math.nan)
                errs.append((est.high - est.mean) if est.n > 1 else 0.0)
            xs = np.arange(len(layers)) + (k - 1) * width
            ax.bar(xs, means, width, yerr=errs, capsize=2, color=COLOURS[kind], label=pair_label(kind))
        ax.set_xticks(range(len(layers)), list(layers), rotation=30, fontsize=8)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    fig.suptitle("feature similarity and weight distance per layer (mean over seed pairs, 95% CI)")
    return fig


def interpolation_figure(pairs_dir: Path, source: str):
    """Paper's figure 5: test error and loss along theta(lambda), per pair kind, barrier marked."""
    fig = new_figure(11, 4)
    found = False
    for index, key in enumerate(("error", "loss")):
        ax = fig.add_subplot(1, 2, index + 1)
        for kind in PAIR_KINDS:
            curves = []
            for path in sorted((pairs_dir / "interp" / kind).glob("*.json")):
                data = json.loads(path.read_text())
                curves.append((data["lambdas"], data[key]))
                ax.plot(data["lambdas"], data[key], color=COLOURS[kind], alpha=0.25, linewidth=0.8)
            if not curves:
                continue
            found = True
            lams = np.array(curves[0][0])
            mean = np.mean([c[1] for c in curves], axis=0)
            label = pair_label(kind)
            ax.plot(lams, mean, color=COLOURS[kind], marker="o", markersize=3, label=label)
            chord = mean[0] + lams * (mean[-1] - mean[0])
            at = int(np.argmax(mean - chord))
            ax.annotate("", xy=(lams[at], mean[at]), xytext=(lams[at], chord[at]),
                        arrowprops={"arrowstyle": "<->", "color": COLOURS[kind]})
            ax.plot(lams[[0, -1]], mean[[0, -1]], linestyle="--", color=COLOURS[kind], alpha=0.5)
            ax.text(lams[at], mean[at], f" barrier {mean[at] - chord[at]:.2f}", color=COLOURS[kind], fontsize=7)
        ax.set_xlabel("λ   (θ = (1-λ) θ_a + λ θ_b)")
        ax.set_ylabel(f"test {key}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{source}: linear interpolation between solutions (BatchNorm statistics recomputed at each λ)")
    return fig if found else None


def criticality_figure(res, source: str):
    """Paper's figure 6: training error over (alpha, sigma) per module, P-T row and R-T row."""
    rows = []
    for r in res.stage("criticality"):
        p = r["params"]
        path = Path(r["dir"]) / "crit.json"
        if p["source"] == source and path.exists():
            rows.append((p["init"], int(p["seed"]), json.loads(path.read_text())))
    chosen = {}
    for arm, seed, data in sorted(rows, key=lambda t: (t[0], t[1])):
        chosen.setdefault(arm, (seed, data))
    if not chosen:
        return None
    from callbacks.plots import draw_heatmap

    arms = [a for a in ("pretrained", "random") if a in chosen]
    modules = list(next(iter(chosen.values()))[1]["modules"])
    fig = new_figure(3.4 * len(modules), 3.6 * len(arms))
    for i, arm in enumerate(arms):
        seed, data = chosen[arm]
        for j, name in enumerate(modules):
            m = data["modules"][name]
            ax = fig.add_subplot(len(arms), len(modules), i * len(modules) + j + 1)
            draw_heatmap(ax, np.array(m["error"]), [f"{a:g}" for a in m["alphas"]], [f"{s:.2g}" for s in m["sigmas"]],
                         cbar_label="train error", vmin=0.0, vmax=1.0, cmap="magma", annotate=False)
            crit = m["criticality"]
            crit_text = "inf" if crit is None or not math.isfinite(crit) else f"{crit:.3g}"
            ax.set_title(f"{ARM_LABEL[arm]} s{seed} {name}\ncriticality {crit_text}", fontsize=8)
            ax.set_xlabel("σ (absolute noise)", fontsize=7)
            ax.set_ylabel("α (θ0→θf)", fontsize=7)
    first = next(iter(chosen.values()))[1]
    bound = "≤ ε" if first.get("bound") == "absolute" else "≤ final error + ε"
    fig.suptitle(f"{source}: module criticality (training error; ε = {first['epsilon']:g}, passing: {bound}; "
                 "blank: not evaluated)")
    return fig


def checkpoint_figure(res, source: str):
    """Paper's figure 8: downstream accuracy and speed vs the pretraining checkpoint, source accuracy."""
    table_ = checkpoint_accuracy(res, source)
    if not table_:
        return None
    steps = sorted(table_)
    fig = new_figure(6.5, 4)
    ax = fig.add_subplot(1, 1, 1)
    for key, label, colour in (("test_acc", "downstream test accuracy", "tab:blue"),
                               ("speed_train_acc", "downstream training speed", "tab:purple")):
        est = [mean_ci([m[key] for m in table_[s].values()]) for s in steps]
        ax.errorbar(steps, [e.mean for e in est], yerr=[(e.high - e.mean) if e.n > 1 else 0 for e in est],
                    marker="o", capsize=3, color=colour, label=label)
    pre = [r for r in res.stage("pretrain") if r["params"]["source"] == source]
    if pre:
        accs = [pre[0]["metrics"].get(f"source_acc@{s}") for s in steps]
        ax.plot(steps, accs, marker="s", linestyle="--", color="grey", label="source test accuracy")
    ax.set_xscale("symlog", linthresh=max(1, steps[1] if len(steps) > 1 else 1))
    ax.set_xlabel("pretraining step of the checkpoint")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{source}: fine-tuning from checkpoints through pretraining", fontsize=10)
    return fig
