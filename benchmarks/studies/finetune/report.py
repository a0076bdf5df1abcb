"""The fine-tuning report: report.md (findings, accuracy and per-layer similarity tables, curves), summary.csv
and figures/, written into the study's store directory from the finished runs of the plan only."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from benchmarks.core.report import figure, findings_section, header, save_figure, table, terminal_table, write_csv
from benchmarks.core.runstore import atomic_write_text
from benchmarks.core.stats import mean_ci
from benchmarks.studies.finetune import analyse as an

TITLE = "Fine-tuning: head-only vs full, and how representations change"


def _cell(values: list[float]) -> str:
    e = mean_ci(values)
    if e.n == 0:
        return "-"
    return f"{e.mean:.3f}" if e.n < 2 else f"{e.mean:.3f} ± {(e.high - e.low) / 2:.3f}"


def _target_description(cfg: dict, name: str, runs: list[dict]) -> str:
    spec = cfg["targets"].get(name, {})
    agreement = mean_ci(an.metric(an.select(runs, target=name), "label_agreement")).mean
    return (f"{spec.get('dataset', '?')} {spec.get('classes', '')} labels={spec.get('labels', 'clean')} "
            f"(agreement {agreement:.2f})")


def _axes(results) -> tuple[list[dict], list[str], list[str], str, list[str]]:
    cfg, runs = results.cfg, results.stage("finetune")
    measure = cfg["similarity"]["measures"][0]
    targets = an.present(cfg["finetune"]["targets"], runs, "target") if runs else []
    modes = an.present(cfg["finetune"]["modes"], runs, "mode") if runs else []
    return runs, targets, modes, measure, an.layers(runs, measure)


def summary_lines(results, findings: list) -> list[str]:
    """Per target x mode: test accuracy and head similarity to start (means over seeds, n), then the verdicts."""
    runs, targets, modes, measure, layers = _axes(results)
    if not runs:
        return []
    rows = []
    for target in targets:
        for mode in modes:
            group = an.select(runs, target=target, mode=mode)
            if group:
                rows.append((target, mode, mean_ci(an.metric(group, "test_acc")).mean,
                             mean_ci(an.metric(group, an.sim_key(measure, layers[-1]))).mean, len(group)))
    lines = ["", *terminal_table(["target", "mode", "test acc", f"{measure} head vs start", "n"], rows), ""]
    return lines + [f"[{f.verdict}] {f.id}: {f.claim}" for f in findings]


def write_report(results, findings: list, protocol: str) -> Path:
    """report.md, summary.csv and figures/ from the finished runs of the plan."""
    cfg, report_dir = results.cfg, Path(results.root)
    runs, targets, modes, measure, layers = _axes(results)
    pre = results.stage("pretrain")
    measures = list(cfg["similarity"]["measures"])
    figures = report_dir / "figures"
    parts = [header(TITLE, results)]
    parts.append(
        "Pretrain on the source task, fine-tune on each target in each mode, and compare every layer group's "
        "representation of a fixed probe set (the target's test images) with the network at the start of "
        f"fine-tuning and with a freshly initialised one ({', '.join(cfg['similarity']['measures'])}; the first "
        f"decides the findings). Head policy: `{cfg['finetune'].get('head_policy', 'reinit')}` (`keep` loads the "
        "source head, as the paper's code does; `reinit` draws a fresh one). `lower` trains the first "
        f"{cfg['finetune'].get('lower_layers') or 'half of the'} body groups and the head. The unit of replication "
        f"is the pretraining seed ({len({r['params']['seed'] for r in pre})} pretrained networks, each with "
        "its own fine-tuning runs): n in the findings counts seeds, not runs. Reference problem for comparisons: "
        f"`{cfg['findings']['reference_target']}` (small data inflates CKA everywhere, so the findings "
        "compare targets with it rather than reading raw values).\n")
    parts.append(findings_section(findings, results, protocol))
    if runs:
        frozen = [r for r in runs if r["metrics"].get("trainable_groups", 0) < len(an.layers([r], measure))]
        broken = [r["key"] for r in frozen if r["metrics"].get("frozen_params_changed", 0) > 0]
        parts.append(f"Frozen parts checked bit for bit after training in {len(frozen)} runs (head-only, lower, ...): "
                     + (f"**{len(broken)} changed**: {', '.join(broken)}\n" if broken else "all unchanged.\n"))
    if pre:
        parts.append("## Pretraining\n")
        parts.append(table(["seed", "source test acc", "source train acc"],
                           [(r["params"]["seed"], r["metrics"].get("source_test_acc", math.nan),
                             r["metrics"].get("source_train_acc", math.nan))
                            for r in sorted(pre, key=lambda r: r["params"]["seed"])]))
    if runs:
        parts += _tables(cfg, runs, targets, modes, measures, layers, figures, report_dir)
        parts.append("## Per-layer similarity at the end of fine-tuning, over seeds\n")
        for mode in modes:
            path = figures / f"layers_{mode}.png"
            if _layer_figure(runs, targets, mode, measures, layers, path):
                parts.append(figure(path, report_dir, f"{mode}: final similarity of each layer with the start and "
                                                      f"a random network ({', '.join(measures)}; mean over seeds, "
                                                      "band = 95% CI over seeds)"))
        parts.append("## Curves over fine-tuning\n")
        for mode in modes:
            for m in measures:
                path = figures / (f"curves_{mode}.png" if m == measure else f"curves_{mode}_{m}.png")
                if _curves_figure(runs, targets, mode, m, "start", path):
                    parts.append(figure(path, report_dir, f"{mode}: per-layer {m} with the start network "
                                                          "(mean over seeds, band = min-max over seeds)"))
        pre_curve = _pretrain_figure(pre, measure, figures / "pretrain_curves.png")
        if pre_curve:
            parts.append(figure(pre_curve, report_dir, f"Pretraining: per-layer {measure} with the initial network"))
        parts.append(_paper_note())
    header_row = ["target", "mode", "seed", "test_acc", "train_acc", "label_agreement",
                  *[an.sim_key(m, layer, ref) for m in measures for ref in an.REFERENCES for layer in layers]]
    write_csv(report_dir / "summary.csv", header_row,
              [(r["params"]["target"], r["params"]["mode"], r["params"]["seed"],
                *[r["metrics"].get(h, "") for h in header_row[3:]])
               for r in sorted(runs, key=lambda r: (r["params"]["target"], r["params"]["mode"], r["params"]["seed"]))])
    path = report_dir / "report.md"
    atomic_write_text(path, "\n".join(parts))
    return path


def _tables(cfg, runs, targets, modes, measures, layers, figures: Path, report_dir: Path) -> list[str]:
    parts = ["## Test accuracy (mean ± 95% CI half-width over seeds)\n",
             "Noisy-label targets are tested on clean labels; permuted targets on permuted labels.\n",
             table(["target", "data", *modes],
                   [(t, _target_description(cfg, t, runs),
                     *[_cell(an.metric(an.select(runs, target=t, mode=m), "test_acc")) for m in modes])
                    for t in targets]),
             "## Training-set fit (accuracy on the labels trained on)\n",
             table(["target", *modes], [(t, *[_cell(an.metric(an.select(runs, target=t, mode=m), "train_acc"))
                                              for m in modes]) for t in targets]),
             "Cells: mean over seeds; `n` = runs (= seeds) per cell.\n",
             table(["target", *modes], [(t, *[len(an.select(runs, target=t, mode=m)) for m in modes])
                                        for t in targets])]
    for measure in measures:
        for reference in an.REFERENCES:
            parts.append(f"## Final per-layer {measure} with the {reference} network (mean over seeds)\n")
            rows = []
            for t in targets:
                for m in modes:
                    group = an.select(runs, target=t, mode=m)
                    if group:
                        rows.append((t, m, *[mean_ci(an.metric(group, an.sim_key(measure, layer, reference))).mean
                                             for layer in layers]))
            parts.append(table(["target", "mode", *layers], rows))
            if rows and measure == measures[0]:
                matrix = np.array([r[2:] for r in rows], dtype=float)
                path = figures / f"final_{reference}.png"
                _final_heatmap([f"{r[0]} / {r[1]}" for r in rows], layers, matrix,
                               f"final {measure} with {reference}", path)
                parts.append(figure(path, report_dir, f"Final {measure} per layer with the {reference} "
                                                      "network (rows: target / mode)"))
    return parts


def _layer_figure(runs: list[dict], targets: list[str], mode: str, measures: list[str], layers: list[str],
                  path: Path) -> bool:
    """Final similarity per layer: a row per measure, a column per reference (start, random_init); a line per
    target, the mean over seeds with its 95% CI over seeds as a band (one value per seed and cell)."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(measures), len(an.REFERENCES), figsize=(4.2 * len(an.REFERENCES),
                             2.9 * len(measures)), squeeze=False, sharex=True, sharey=True)
    xs = list(range(len(layers)))
    drawn = False
    for row, measure in enumerate(measures):
        for col, reference in enumerate(an.REFERENCES):
            ax = axes[row][col]
            for target in targets:
                group = an.select(runs, target=target, mode=mode)
                estimates = [mean_ci(an.metric(group, an.sim_key(measure, layer, reference))) for layer in layers]
                if not group or all(e.n == 0 for e in estimates):
                    continue
                means = [e.mean for e in estimates]
                line = ax.plot(xs, means, marker="o", ms=3, label=target)[0]
                if all(e.n >= 2 for e in estimates):
                    ax.fill_between(xs, [max(e.low, -0.05) for e in estimates], [min(e.high, 1.05) for e in estimates],
                                    alpha=0.15, color=line.get_color())
                drawn = True
            ax.set_title(f"{measure} with {reference}", fontsize=9)
            ax.set_ylim(-0.02, 1.02)
            ax.set_xticks(xs, layers, rotation=30, fontsize=7)
    axes[0][0].set_ylabel("similarity")
    if drawn:
        axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"{mode} fine-tuning: final similarity per layer (mean over seeds, band = 95% CI)")
    save_figure(fig, path)
    return drawn


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _curves_figure(runs: list[dict], targets: list[str], mode: str, measure: str, reference: str, path: Path) -> bool:
    """Per-layer similarity vs fine-tuning epoch, one panel per target (mean over seeds, min-max band)."""
    plt = _pyplot()
    cols = min(4, len(targets))
    rows_n = math.ceil(len(targets) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.4 * cols, 2.8 * rows_n), squeeze=False, sharey=True)
    drawn = False
    for ax, target in zip(axes.flat, targets):
        for layer, points in an.similarity_curves(an.select(runs, target=target, mode=mode), measure,
                                                  reference).items():
            xs = sorted(points)
            ax.plot(xs, [float(np.mean(points[x])) for x in xs], marker="o", ms=2, label=layer)
            ax.fill_between(xs, [min(points[x]) for x in xs], [max(points[x]) for x in xs], alpha=0.15)
            drawn = True
        ax.set_title(target, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylim(-0.02, 1.02)
    for ax in list(axes.flat)[len(targets):]:
        ax.axis("off")
    axes[0][0].set_ylabel(f"{measure} vs {reference}")
    if drawn:
        axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{mode} fine-tuning: {measure} of each layer with the {reference} network")
    save_figure(fig, path)
    return drawn


def _final_heatmap(rows: list[str], layers: list[str], matrix: np.ndarray, title: str, path: Path) -> None:
    from callbacks.plots import draw_heatmap

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.0 * len(layers) + 3, 0.35 * len(rows) + 1.8))
    draw_heatmap(ax, matrix, rows, layers, cbar_label="similarity", vmin=0.0, vmax=1.0)
    ax.set_title(title)
    save_figure(fig, path)


def _pretrain_figure(pre: list[dict], measure: str, path: Path) -> Path | None:
    curves = an.similarity_curves(pre, measure, "init")
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for layer, points in curves.items():
        xs = sorted(points)
        ax.plot(xs, [float(np.mean(points[x])) for x in xs], marker="o", ms=3, label=layer)
    ax.set_xlabel("pretraining epoch")
    ax.set_ylabel(f"{measure} vs init")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def _paper_note() -> str:
    return ("## Published reference points\n\n"
            "Goerttler & Obermayer (conv4, linear CKA on 500 probe examples): first blocks stay at about "
            "0.99 / 0.97 / 0.92 similarity to the start network; the head falls to about 0.02-0.06 for "
            "cross-domain or random-label targets. Compare the *pattern* (depth trend, collapse relative to "
            "the reference target), not the raw values: CKA on few examples is inflated.\n")
