"""Study 1's report: report.md (findings, Dice/IoU per variant, paired comparisons, encoder CKA, source
runs), summary.csv and the figures, from the finished runs of the plan and their findings."""

from __future__ import annotations

from pathlib import Path

from benchmarks.core.report import figure, findings_section, header, save_figure, table, terminal_table, write_csv
from benchmarks.core.results import PlanResults
from benchmarks.core.runstore import atomic_write_text
from benchmarks.studies.segmentation import analyse
from benchmarks.studies.segmentation.analyse import curves, group, variant_order
from benchmarks.studies.segmentation.protocol import PAPER, PROTOCOL

TITLE = "Segmentation transfer: choose the right encoder, skip the decoder"
SUMMARY_HEADERS = ["variant", "label_fraction", "dice_mean", "dice_std", "dice_low", "dice_high", "iou_mean",
                   "iou_std", "epochs_to_95_mean", "n"]


def _plot_learning_curves(runs: list[dict], fractions: list[float], path: Path) -> Path:
    import matplotlib
    import numpy as np

    from callbacks.plots import new_figure

    fig = new_figure(6 * len(fractions), 4.2)
    axes = fig.subplots(1, len(fractions), squeeze=False)
    groups = group(runs)
    names = sorted({v for v, _ in groups}, key=variant_order)
    colours = matplotlib.colormaps["tab10"]
    for ax, fraction in zip(axes[0], fractions):
        for i, name in enumerate(names):
            series = [[row.get("val/dice", np.nan) for row in curves(r)["history"]]
                      for r in groups.get((name, fraction), [])]
            series = [c for c in series if c]
            if not series:
                continue
            length = min(len(c) for c in series)
            arr = np.array([c[:length] for c in series], dtype=float)
            mean, std = np.nanmean(arr, 0), np.nanstd(arr, 0)
            epochs = np.arange(1, length + 1)
            style = "--" if "transferred" in name else (":" if "frozen" in name else "-")
            ax.plot(epochs, mean, style, color=colours(i % 10), label=name)
            ax.fill_between(epochs, mean - std, mean + std, color=colours(i % 10), alpha=0.15)
        ax.set_title(f"label fraction {fraction:g}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation Dice")
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
    ax.set_ylabel("test Dice (mean, 95% CI)")
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


def _protocol_text() -> str:
    return (f"Protocol, claims and margins: `{PROTOCOL}` ({PAPER}). Source tasks train once on the source scene "
            "domain; every variant is then fine-tuned on the target domain (binary segmentation) at each label "
            "fraction and seed. Same seed = same labelled subset and same fresh parts, so comparisons are paired "
            "by seed, and measurements that share a seed (sources, fractions) are averaged within the seed "
            "before a test. Dice/IoU: torchmetrics, background excluded, per image then averaged over images "
            "(`DiceScore(average='macro', aggregation_level='samplewise')`, `MeanIoU`), on the held-out test "
            "images after the last epoch.\n")


def _interval(e) -> str:
    return f"[{e.low:.3f}, {e.high:.3f}]" if e.n > 1 else "n/a (one seed)"


def _fmt_metrics(metrics: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" for k, v in sorted(metrics.items())
                     if k.startswith(("val/", "train/")) and isinstance(v, float))


def write_summary(results: PlanResults) -> Path:
    """summary.csv: one row per (variant, label fraction), estimates over seeds."""
    rows = analyse.summary_rows(results.stage("target"))
    return write_csv(results.root / "summary.csv", SUMMARY_HEADERS,
                     [(r["variant"], r["fraction"], r["dice"].mean, r["dice"].std, r["dice"].low, r["dice"].high,
                       r["iou"].mean, r["iou"].std, r["epochs"].mean, r["dice"].n) for r in rows])


def write_report(results: PlanResults, findings: list) -> Path:
    """report.md + figures/ + summary.csv in the study's store directory."""
    root = results.root
    runs, sources = results.stage("target"), results.stage("source")
    fig_dir = root / "figures"
    rows = analyse.summary_rows(runs)
    fractions = analyse.fractions(runs)
    write_summary(results)
    parts = [header(TITLE, results), _protocol_text(), findings_section(findings, results, PROTOCOL)]
    parts += ["## Test Dice and IoU per variant", "",
              table(["variant", "label fraction", "test Dice mean ± std", "95% CI", "IoU mean ± std",
                     "epochs to 95% of final val Dice", "n"],
                    [(r["variant"], r["fraction"], f"{r['dice'].mean:.3f} ± {r['dice'].std:.3f}",
                      _interval(r["dice"]), f"{r['iou'].mean:.3f} ± {r['iou'].std:.3f}",
                      f"{r['epochs'].mean:.1f}", r["dice"].n) for r in rows])]
    if rows:
        parts.append(figure(_plot_final_bars(rows, fractions, fig_dir / "final_dice.png"), root,
                            "Test Dice per variant and label fraction (mean, 95% CI over seeds)"))
        parts.append(figure(_plot_learning_curves(runs, fractions, fig_dir / "learning_curves.png"), root,
                            "Validation Dice per epoch (mean ± std over seeds); dashed = transferred decoder, "
                            "dotted = frozen encoder"))
    parts += ["## Paired comparisons (same seed)", "",
              table(["comparison (test Dice)", "label fraction", "difference [95% CI]", "seeds"],
                    [(name, f, e.interval(), e.n) for name, f, e in analyse.paired_rows(runs)])]
    headers, cka_rows, means = analyse.cka_rows(runs)
    if cka_rows:
        parts += ["## How much each encoder changed during fine-tuning", "",
                  "Linear CKA (biased HSIC, similarity.cka.linear_cka) between each encoder stage's output on a "
                  "fixed probe batch of target images before and after fine-tuning (1 = unchanged), mean over "
                  "runs of all fractions and seeds.", "", table(headers, cka_rows),
                  figure(_plot_cka(means, fig_dir / "encoder_cka.png"), root,
                         "Encoder stage similarity before vs after fine-tuning")]
    if sources:
        parts += ["## Source runs", "", table(["task", "metrics", "wall (s)"],
                                              [(s["params"]["task"], _fmt_metrics(s["metrics"]),
                                                round(s["metrics"].get("wall_seconds", 0.0), 1))
                                               for s in sources])]
    path = root / "report.md"
    atomic_write_text(path, "\n".join(parts) + "\n")
    return path


def summary_lines(results: PlanResults, findings: list) -> list[str]:
    """The per-variant table and the verdicts, for the terminal."""
    rows = analyse.summary_rows(results.stage("target"))
    lines = terminal_table(["variant", "frac", "test Dice mean ± std [95% CI]", "IoU", "ep→95%", "n"],
                           [(r["variant"], r["fraction"], _dice_text(r["dice"]), f"{r['iou'].mean:.3f}",
                             f"{r['epochs'].mean:.1f}", r["dice"].n) for r in rows])
    lines += ["", f"findings ({results.completeness}):"]
    lines += [f"  [{f.verdict}] ({f.id}) {f.claim} — {f.effect_text()}, {f.test}, n={f.n}" for f in findings]
    return lines


def _dice_text(dice) -> str:
    return f"{dice.mean:.3f} ± {dice.std:.3f} [{dice.low:.3f}, {dice.high:.3f}]" if dice.n > 1 else f"{dice.mean:.3f}"
