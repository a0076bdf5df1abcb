"""Study 1's report: report.md (the paper's claims beside the outcomes here, converged Dice per variant with
the evaluation noise, convergence checks and speed, paired comparisons, encoder CKA, source runs), summary.csv
and the figures, from the finished runs of the plan and their findings."""

from __future__ import annotations

import math
from pathlib import Path

from benchmarks.core.report import figure, findings_section, header, save_figure, table, terminal_table, write_csv
from benchmarks.core.results import PlanResults
from benchmarks.core.runstore import atomic_write_text
from benchmarks.studies.segmentation import analyse
from benchmarks.studies.segmentation.analyse import group, val_curve, variant_order
from benchmarks.studies.segmentation.protocol import (
    PAPER,
    PLATEAU_EPOCHS,
    PLATEAU_TOLERANCE,
    PROTOCOL,
    SOURCE_PLATEAU_EPOCHS,
    SOURCE_PLATEAU_TOLERANCE,
    THRESHOLD_SHARE,
    paper_says,
)
from datamodules.fashion_mnist import FASHION_MNIST_CLASSES

TITLE = "Segmentation transfer: choose the right encoder, skip the decoder"
SUMMARY_HEADERS = ["variant", "label_fraction", "dice_mean", "dice_std", "dice_low", "dice_high", "iou_mean",
                   "iou_std", "best_val_dice_mean", "steps_to_threshold_mean", "threshold", "image_dice_sd_mean",
                   "test_dice_se_mean", "epochs_run_mean", "n"]
CI_GOAL = 0.05  # per-variant test-Dice 95% CI half-width the tiny profile is sized for (issue acceptance)
SOURCE_METRIC = {"classification": "best_val_acc", "segmentation": "best_val_dice",
                 "reconstruction": "best_val_loss", "contrastive": "best_val_ntxent"}


def _style(name: str) -> str:
    return "--" if "transferred" in name else (":" if "frozen" in name else "-")


def _carried(curve: list[tuple[int, float]], steps: list[int]) -> list[float]:
    """The curve's value at each step, the last value carried forward after a run stopped early."""
    out, i, value = [], 0, math.nan
    for step in steps:
        while i < len(curve) and curve[i][0] <= step:
            value = curve[i][1]
            i += 1
        out.append(value)
    return out


def _panels_per_fraction(runs: list[dict], fractions: list[float]):
    """A figure with one panel per label fraction, the runs grouped by (variant, fraction), the variants in
    report order, and their colours: what both curve figures share."""
    import matplotlib

    from callbacks.plots import new_figure

    fig = new_figure(6 * len(fractions), 4.2)
    axes = fig.subplots(1, len(fractions), squeeze=False)
    groups = group(runs)
    names = sorted({v for v, _ in groups}, key=variant_order)
    return fig, axes, groups, names, matplotlib.colormaps["tab10"]


def _plot_learning_curves(runs: list[dict], fractions: list[float], path: Path) -> Path:
    import numpy as np

    fig, axes, groups, names, colours = _panels_per_fraction(runs, fractions)
    for ax, fraction in zip(axes[0], fractions):
        for i, name in enumerate(names):
            series = [c for c in (val_curve(r) for r in groups.get((name, fraction), [])) if c]
            if not series:
                continue
            steps = sorted({s for c in series for s, _ in c})
            arr = np.array([_carried(c, steps) for c in series], dtype=float)
            mean, std = np.nanmean(arr, 0), np.nanstd(arr, 0)
            ax.plot(steps, mean, _style(name), color=colours(i % 10), label=name)
            ax.fill_between(steps, mean - std, mean + std, color=colours(i % 10), alpha=0.12)
        threshold = analyse.report_threshold(runs, fraction)
        if not math.isnan(threshold):
            ax.axhline(threshold, color="grey", lw=0.8, ls="-.", label=f"threshold {threshold:.3f}")
        ax.set_title(f"label fraction {fraction:g}")
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("validation Dice")
        ax.grid(alpha=0.3)
    if axes[0][-1].get_legend_handles_labels()[0]:
        axes[0][-1].legend(fontsize=7, loc="lower right")
    return save_figure(fig, path)


def _plot_time_to_threshold(runs: list[dict], fractions: list[float], path: Path) -> Path:
    """Per arm: the share of its runs whose best-so-far validation Dice has reached the report's threshold."""
    fig, axes, groups, names, colours = _panels_per_fraction(runs, fractions)
    for ax, fraction in zip(axes[0], fractions):
        threshold = analyse.report_threshold(runs, fraction)
        budget = max((r["metrics"].get("max_steps", 0.0) for r in runs), default=0.0)
        for i, name in enumerate(names):
            runs_ = groups.get((name, fraction), [])
            if not runs_ or math.isnan(threshold):
                continue
            reached = [s for s in sorted(analyse.steps_to(r, threshold) for r in runs_) if budget == 0.0 or s < budget]
            xs = [0.0] + [s for s in reached for _ in (0, 1)] + [budget or max(reached, default=1.0)]
            ys = [0.0] + [v for k in range(len(reached)) for v in (k / len(runs_), (k + 1) / len(runs_))]
            ys.append(ys[-1])
            ax.plot(xs, ys, _style(name), color=colours(i % 10), label=name)
        ax.set_title(f"label fraction {fraction:g}: threshold {threshold:.3f}")
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("share of runs at the threshold")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    if axes[0][-1].get_legend_handles_labels()[0]:
        axes[0][-1].legend(fontsize=7, loc="lower right")
    return save_figure(fig, path)


def _plot_final_bars(rows: list[dict], fractions: list[float], path: Path) -> Path:
    from callbacks.plots import new_figure

    names = sorted({r["variant"] for r in rows}, key=variant_order)
    fig = new_figure(max(6, 0.9 * len(names) * len(fractions)), 4.2)
    ax = fig.subplots()
    width = 0.8 / max(len(fractions), 1)
    for j, fraction in enumerate(fractions):
        sub = {r["variant"]: r for r in rows if r["fraction"] == fraction}
        xs, ys, errs = [], [], []
        for i, name in enumerate(names):
            if name in sub:
                d = sub[name]["dice"]
                xs.append(i + j * width)
                ys.append(d.mean)
                errs.append(0 if d.n < 2 else (d.high - d.low) / 2)
        ax.bar(xs, ys, width, yerr=errs, capsize=3, label=f"fraction {fraction:g}")
    ax.set_xticks([i + width * (len(fractions) - 1) / 2 for i in range(len(names))])
    ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("converged test Dice (mean, 95% CI)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def _plot_cka(means: dict[str, list[float]], path: Path) -> Path:
    from callbacks.plots import new_figure

    fig = new_figure(6.5, 4.2)
    ax = fig.subplots()
    for name, values in means.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", label=name)
    ax.set_xlabel("encoder stage (shallow → deep)")
    ax.set_ylabel("linear CKA before vs after fine-tuning")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def _protocol_text(results: PlanResults) -> str:
    target = results.cfg.get("target", {})
    norms = target.get("frozen_norms", "eval")
    policy = ("BatchNorm layers in eval mode, normalising with the running statistics they start with, never "
              "updated (as smp's freeze_encoder())" if norms == "eval" else
              "BatchNorm layers in train mode: batch statistics, running statistics updated")
    return (f"Protocol, claims and margins: `{PROTOCOL}` ({PAPER}). Source tasks train once on the source scene "
            "domain; every variant is then fine-tuned on the target domain (binary segmentation) at each label "
            "fraction and seed. Every run (source and target) trains to a plateau under one rule: cosine decay of "
            "the learning rate over the epoch budget, early stopping on the validation metric with a patience, "
            "and the best validation epoch's weights are kept (handed on by a source, tested by a target run). "
            "Same seed = same labelled subset and same fresh parts, so comparisons are paired by seed, and "
            "measurements that share a seed (sources, fractions) are averaged within the seed before a test. "
            "Dice/IoU: torchmetrics, background excluded, per image then averaged over images "
            "(`DiceScore(average='macro', aggregation_level='samplewise')`, `MeanIoU`). Frozen-encoder control: "
            f"`target.frozen_norms: {norms}`, {policy}.\n")


TRIM_KEYS = ("seeds", "data.image_size", "model.decoder_channels", "source.n_train", "source.epochs",
             "source.patience", "target.n_train", "target.n_val", "target.n_test", "target.label_fractions",
             "target.epochs", "target.min_steps_per_epoch", "target.patience")


def _trimmed(cfg: dict) -> str:
    """The settings where this profile departs from the paper profile, side by side, with the reason."""
    from benchmarks.core.config import lookup
    from benchmarks.core.runner import resolve_config

    try:
        paper = resolve_config("segmentation", "paper", [])
    except Exception:  # noqa: BLE001 - the section is informative only
        return ""
    rows = [(key, lookup(cfg, key), lookup(paper, key)) for key in TRIM_KEYS
            if lookup(cfg, key) != lookup(paper, key)]
    if not rows:
        return "## Budget\n\nThis run uses the paper profile's settings.\n"
    same = len(lookup(cfg, "seeds") or []) == len(lookup(paper, "seeds") or [])
    seeds = ", and the number of seeds stays at the paper profile's" if same else ""
    return "\n".join([
        "## Budget: what this profile trims relative to the paper profile", "",
        "Smaller images and networks, fewer labelled images and label fractions, and shorter budgets, so that "
        "the whole grid runs on a small CPU; every run still trains to its own plateau (early stopping on "
        f"validation, checked in \"Convergence\"){seeds}. Reasons per setting: `{PROTOCOL}`, \"Profiles\".", "",
        table(["setting", "this profile", "paper profile"], rows)])


def _paper_vs_here(findings: list) -> str:
    rows = [(f.id, f"as `{f.id.split('.')[0]}`" if "." in f.id else paper_says(f.id), f.claim, f"**{f.verdict}**",
             f.effect_text(), f"n={f.n}") for f in findings]
    return "## The paper's claims and the outcome here\n\n" + table(
        ["id", "the paper says", "tested here", "verdict", "effect (95% CI)", "n"], rows)


def _interval(e) -> str:
    return f"[{e.low:.3f}, {e.high:.3f}]" if e.n > 1 else "n/a (one seed)"


def _half_width(e) -> float:
    return (e.high - e.low) / 2 if e.n > 1 else math.nan


def _ci_check(e) -> str:
    width = _half_width(e)
    return "n/a" if math.isnan(width) else f"{width:.3f} {'✓' if width <= CI_GOAL else '✗'}"


def _evaluation_noise(rows: list[dict]) -> str:
    """Per-image Dice spread → the evaluation noise of one run's test Dice, beside the spread over seeds."""
    if not rows:
        return ""
    sds = [r["image_sd"].mean for r in rows if not math.isnan(r["image_sd"].mean)]
    ses = [r["se"].mean for r in rows if not math.isnan(r["se"].mean)]
    seed_sds = [r["dice"].std for r in rows if r["dice"].n > 1]
    if not sds:
        return ""
    text = (f"Evaluation noise: over the test images of one run, Dice varies with SD {min(sds):.3f}–{max(sds):.3f} "
            f"(mean {sum(sds) / len(sds):.3f}), so one run's test Dice carries a standard error of "
            f"{min(ses):.4f}–{max(ses):.4f} from the choice of test images.")
    if seed_sds:
        text += (f" The SD of test Dice over seeds within a variant is {min(seed_sds):.3f}–{max(seed_sds):.3f}: "
                 "training, not evaluation, dominates the spread the tests see.")
    return text + "\n"


def _plateau_section(runs: list[dict]) -> str:
    rows = analyse.plateau_rows(runs)
    if not rows:
        return ""
    flat = sum(1 for r in rows if r["plateaued"])
    checked = sum(1 for r in rows if r["known"])
    return "\n".join([
        "## Convergence", "",
        f"Plateau check: per run, the improvement of the best validation Dice within its last {PLATEAU_EPOCHS} "
        f"epochs over the best before them; an arm has plateaued when the mean over its runs is at most "
        f"{PLATEAU_TOLERANCE:g} Dice (fixed in the protocol). {flat} of {checked} arms with curves longer than "
        f"{PLATEAU_EPOCHS} epochs plateaued ({len(rows) - checked} too short to tell).", "",
        table(["variant", "label fraction", f"last-{PLATEAU_EPOCHS}-epoch gain mean", "max", "runs stopped early",
               "plateaued"],
              [(r["variant"], r["fraction"], f"{r['mean']:.4f}", f"{r['max']:.4f}", f"{r['stopped']} of {r['n']}",
                "yes" if r["plateaued"] else ("n/a (too short)" if not r["known"] else "**no**")) for r in rows]),
    ])


def _source_section(sources: list[dict]) -> list[str]:
    if not sources:
        return []
    rows = []
    for s in sorted(sources, key=lambda r: r["params"]["task"]):
        m, task = s["metrics"], s["params"]["task"]
        change = m.get("plateau_change_relative", math.nan)
        metric = SOURCE_METRIC.get(task, "best_val_loss")
        flat = "n/a (too short)" if math.isnan(change) else ("yes" if change <= SOURCE_PLATEAU_TOLERANCE else "**no**")
        rows.append((task, f"{m.get('epochs_run', math.nan):.0f} of {m.get('max_epochs', math.nan):.0f}",
                     f"{m.get('best_epoch', math.nan):.0f}", f"{m.get('best_val_loss', math.nan):.4g}",
                     f"{metric.removeprefix('best_')} = {m.get(metric, math.nan):.4g}", f"{change:.4f}", flat,
                     round(m.get("wall_seconds", 0.0), 1)))
    return ["## Source runs", "",
            "Every source task follows the same budget rule (epoch budget, cosine decay, early stopping on its "
            "validation loss, best epoch handed on). Converged = the task's own validation metric at its best "
            f"epoch; plateaued = the best validation loss improved by at most {SOURCE_PLATEAU_TOLERANCE:.0%} of "
            f"itself within the last {SOURCE_PLATEAU_EPOCHS} epochs.", "",
            table(["task", "epochs run", "best epoch", "best val loss", "converged metric",
                   f"last-{SOURCE_PLATEAU_EPOCHS}-epoch relative gain", "plateaued", "wall (s)"], rows),
            *classification_check(sources)]


_OVERFIT = "It fits its training scenes without learning the classes"
_UNLEARNT = "It did not learn its classes in this budget"


def classification_check(sources: list[dict]) -> list[str]:
    """Whether the classification source learned its classes: its validation accuracy against chance."""
    run = next((s for s in sources if s["params"]["task"] == "classification"), None)
    if run is None or "best_val_acc" not in run["metrics"]:
        return []
    m = run["metrics"]
    acc, chance, train = m["best_val_acc"], 1 / len(FASHION_MNIST_CLASSES), m.get("train/acc", math.nan)
    if acc >= 2 * chance:
        return ["", f"The classification source is above chance: validation accuracy {acc:.3f}, chance {chance:.2f}."]
    return ["", f"**The classification source is near chance**: validation accuracy {acc:.3f} at its best "
                f"(lowest-loss) epoch, chance {chance:.2f}, training accuracy {train:.3f} at its last epoch. "
                f"{_OVERFIT if train >= 2 * chance else _UNLEARNT}, so the encoder it hands on is weakly trained: "
                "findings b and c compare against that encoder, not against a well-trained classifier's (see the "
                "protocol's profile notes)."]


def write_summary(results: PlanResults) -> Path:
    """summary.csv: one row per (variant, label fraction), estimates over seeds."""
    rows = analyse.summary_rows(results.stage("target"))
    return write_csv(results.root / "summary.csv", SUMMARY_HEADERS,
                     [(r["variant"], r["fraction"], r["dice"].mean, r["dice"].std, r["dice"].low, r["dice"].high,
                       r["iou"].mean, r["iou"].std, r["best_val"].mean, r["steps"].mean, r["threshold"],
                       r["image_sd"].mean, r["se"].mean, r["epochs"].mean, r["dice"].n) for r in rows])


def write_report(results: PlanResults, findings: list) -> Path:
    """report.md + figures/ + summary.csv in the study's store directory."""
    root = results.root
    runs, sources = results.stage("target"), results.stage("source")
    fig_dir = root / "figures"
    rows = analyse.summary_rows(runs)
    fractions = analyse.fractions(runs)
    write_summary(results)
    parts = [header(TITLE, results), _protocol_text(results), findings_section(findings, results, PROTOCOL),
             _paper_vs_here(findings), _trimmed(results.cfg)]
    widths = [w for w in (_half_width(r["dice"]) for r in rows) if not math.isnan(w)]
    within = sum(1 for w in widths if w <= CI_GOAL)
    parts += ["## Converged test Dice and IoU per variant", "",
              "Test Dice of the best validation epoch's weights. CI half-width: the 95% CI over seeds; the profile "
              f"is sized for at most {CI_GOAL:g} (✓ within, ✗ wider): {within} of {len(widths)} arms within"
              f"{f', widest {max(widths):.3f}' if widths else ''}. Steps: optimiser steps until the best-so-far "
              "validation Dice "
              f"reaches {THRESHOLD_SHARE:g} x the best arm's mean converged validation Dice at that fraction "
              "(the threshold column); a run that never does counts as its budget.", "",
              table(["variant", "label fraction", "test Dice mean ± std", "95% CI", "CI half-width",
                     "IoU mean ± std", "best val Dice", "threshold", "steps to threshold", "per-image Dice SD",
                     "epochs run", "n"],
                    [(r["variant"], r["fraction"], f"{r['dice'].mean:.3f} ± {r['dice'].std:.3f}",
                      _interval(r["dice"]), _ci_check(r["dice"]), f"{r['iou'].mean:.3f} ± {r['iou'].std:.3f}",
                      f"{r['best_val'].mean:.3f}", f"{r['threshold']:.3f}", f"{r['steps'].mean:.0f}",
                      f"{r['image_sd'].mean:.3f}", f"{r['epochs'].mean:.1f}", r["dice"].n) for r in rows]),
              _evaluation_noise(rows)]
    if rows:
        parts.append(figure(_plot_final_bars(rows, fractions, fig_dir / "final_dice.png"), root,
                            "Converged test Dice per variant and label fraction (mean, 95% CI over seeds)"))
        parts.append(figure(_plot_learning_curves(runs, fractions, fig_dir / "learning_curves.png"), root,
                            "Validation Dice per optimiser step (mean ± std over seeds, a run's last value carried "
                            "after it stopped early); dashed = transferred decoder, dotted = frozen encoder; "
                            "grey = the report's threshold"))
        parts.append(figure(_plot_time_to_threshold(runs, fractions, fig_dir / "time_to_threshold.png"), root,
                            "Time to threshold: share of each arm's runs whose best validation Dice has reached "
                            "the threshold, by optimiser step"))
        parts.append(_plateau_section(runs))
    parts += ["## Paired comparisons (same seed)", "",
              table(["comparison (converged test Dice)", "label fraction", "difference [95% CI]", "seeds"],
                    [(name, f, e.interval(), e.n) for name, f, e in analyse.paired_rows(runs)])]
    headers, cka_rows, means = analyse.cka_rows(runs)
    if cka_rows:
        parts += ["## How much each encoder changed during fine-tuning", "",
                  "Linear CKA (biased HSIC, similarity.cka.linear_cka) between each encoder stage's output on a "
                  "fixed probe batch of target images before and after fine-tuning (1 = unchanged), mean over "
                  "runs of all fractions and seeds.", "", table(headers, cka_rows),
                  figure(_plot_cka(means, fig_dir / "encoder_cka.png"), root,
                         "Encoder stage similarity before vs after fine-tuning")]
    parts += _source_section(sources)
    path = root / "report.md"
    atomic_write_text(path, "\n".join(parts) + "\n")
    return path


def summary_lines(results: PlanResults, findings: list) -> list[str]:
    """The per-variant table and the verdicts, for the terminal."""
    rows = analyse.summary_rows(results.stage("target"))
    lines = terminal_table(["variant", "frac", "test Dice mean ± std [95% CI]", "IoU", "steps→thr", "epochs", "n"],
                           [(r["variant"], r["fraction"], _dice_text(r["dice"]), f"{r['iou'].mean:.3f}",
                             f"{r['steps'].mean:.0f}", f"{r['epochs'].mean:.1f}", r["dice"].n) for r in rows])
    lines += ["", f"findings ({results.completeness}):"]
    lines += [f"  [{f.verdict}] ({f.id}) {f.claim} — {f.effect_text()}, {f.test}, n={f.n}" for f in findings]
    return lines


def _dice_text(dice) -> str:
    return f"{dice.mean:.3f} ± {dice.std:.3f} [{dice.low:.3f}, {dice.high:.3f}]" if dice.n > 1 else f"{dice.mean:.3f}"
