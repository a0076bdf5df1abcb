"""The MAML study's report: report.md (findings, accuracy, per-layer tables, figures) and summary.csv.

Reads only what the core hands over: the finished runs of the current plan and the plan's config
(``results.runs``, ``results.cfg``). Every number with a CI is a mean over seeds of per-seed means
(tasks averaged within a seed first); n is the number of seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks.core.report import figure, findings_section, header, save_figure, table, terminal_table, write_csv
from benchmarks.core.results import PlanResults
from benchmarks.core.runstore import atomic_write_text
from benchmarks.core.stats import mean_ci
from benchmarks.studies.maml.analyse import (
    accuracy,
    across_seeds,
    by_seed_mean,
    checkpoints,
    models_with_accuracy,
    select,
)
from benchmarks.studies.maml.findings import experiment_data, last_inner_step
from benchmarks.studies.maml.plan import experiment_config
from benchmarks.studies.maml.protocol import LAYERS, MODELS, PUBLISHED

TITLE = "Study 3: similarity of representations in MAML"
SUMMARY_COLUMNS = ("experiment", "model", "kind", "checkpoint", "layer", "inner_step", "measure", "mean", "low",
                   "high", "n")


def _ci(row: dict) -> str:
    if row["n"] < 2:
        return f"{row['mean']:.3f} (n={row['n']})"
    return f"{row['mean']:.3f} ± {(row['high'] - row['low']) / 2:.3f}"


def write_report(results: PlanResults, findings: list, protocol: str) -> Path:
    """``report.md``, ``summary.csv`` and figures in the study's store directory."""
    root = results.root
    figures = root / "figures"
    parts = [header(TITLE, results),
             "After Goerttler & Obermayer (arXiv 2105.05757). Dissimilarities: **rsa_dissimilarity** = 1 − "
             "Spearman correlation of the RDMs (first level 1 − Pearson between probe images), "
             "**linear_cka_dissimilarity** = 1 − linear CKA; "
             "0 means the same representational geometry. Every number with a CI is the mean over seeds of "
             "each seed's mean over analysed tasks (95% CI over seeds, n = seeds).", "",
             findings_section(findings, results, protocol)]
    summary_rows: list[dict] = []
    data = experiment_data(results)
    for experiment in results.cfg["experiments"]:
        if experiment not in data:
            parts.append(f"## {experiment}\n\nNo finished runs yet.\n")
            continue
        config = experiment_config(results.cfg, experiment)
        parts += _experiment_section(config, data[experiment], last_inner_step(results.cfg), root, figures)
        summary_rows += _summary_rows(experiment, data[experiment])
    write_csv(root / "summary.csv", SUMMARY_COLUMNS, [[r.get(k) for k in SUMMARY_COLUMNS] for r in summary_rows])
    path = root / "report.md"
    atomic_write_text(path, "\n".join(parts) + "\n")
    return path


def summary_lines(results: PlanResults, findings: list) -> list[str]:
    rows = []
    for experiment, d in experiment_data(results).items():
        for model in models_with_accuracy(d):
            est, tasks = accuracy(d, model)
            ci = f" ± {(est.high - est.low) / 2:.3f}" if est.n >= 2 else " (one seed)"
            rows.append((experiment, model, f"{est.mean:.3f}{ci}", est.n, tasks))
    lines = terminal_table(("experiment", "model", "meta-test acc (95% CI over seeds)", "seeds", "tasks/seed"), rows)
    return lines + ["", f"findings ({results.completeness}):"] + [f"  [{f.verdict}] {f.id}: {f.claim}"
                                                                  for f in findings]


def _summary_rows(experiment: str, d: dict) -> list[dict]:
    rows = [{"experiment": experiment, "kind": "within", **r}
            for r in across_seeds(d["within"], ("model", "checkpoint", "layer", "inner_step", "measure"))]
    rows += [{"experiment": experiment, "kind": "between", "checkpoint": r["to"], **r}
             for r in across_seeds(d["between"], ("model", "to", "layer", "measure"))]
    for model in models_with_accuracy(d):
        est, _ = accuracy(d, model)
        rows.append({"experiment": experiment, "model": model, "kind": "test_acc", "mean": est.mean,
                     "low": est.low, "high": est.high, "n": est.n})
    return rows


def _experiment_section(config: dict, d: dict, last: int, root: Path, figures: Path) -> list[str]:
    experiment, data, meta, analysis = config["experiment"], config["data"], config["maml"], config["analysis"]
    record = analysis["record_steps"]
    out = [f"## {experiment}: {data['source']} {data['ways']}-way {data['shots']}-shot", "",
           f"{'first' if meta['first_order'] else 'second'}-order meta-gradients, meta-batch "
           f"{meta['meta_batch_size']}, inner lr {meta['inner_lr']} ({meta.get('inner_lr_mode', 'fixed')}), "
           f"{meta['inner_steps']} inner steps in training and {meta['inner_steps_test']} at test, "
           f"{meta['meta_steps']} meta-steps; analysis on {analysis['tasks']} fixed test tasks, one probe "
           f"image per class, inner steps {record}.", "", "### Meta-test accuracy", ""]
    acc_rows = []
    for model in models_with_accuracy(d):
        est, tasks = accuracy(d, model)
        published = PUBLISHED.get((data["source"], data["ways"], data["shots"], model))
        label = {"control": f"control (fine-tuned {meta['inner_steps_test']} steps from a fresh head)"}.get(model,
                                                                                                           model)
        interval = f"[{est.low:.4f}, {est.high:.4f}]" if est.n >= 2 else "one seed, no CI"
        acc_rows.append((label, f"{est.mean:.4f}", interval, est.n, tasks,
                         f"{published:.3f}" if published else "-"))
    out += [table(("model", "accuracy", "95% CI over seeds", "seeds", "tasks per seed", "published"), acc_rows),
            f"Chance is {1 / data['ways']:.2f}.", ""]
    fig_path = _accuracy_figure(d, figures / f"{experiment}_accuracy.png", experiment)
    if fig_path:
        out.append(figure(fig_path, root, "Meta-test accuracy (mean over seeds, 95% CI over seeds)"))
    for measure in analysis["measures"]:
        out += [f"### Change over the inner loop ({measure}), final checkpoint", ""]
        rows = []
        for model in MODELS:
            cps = checkpoints(d, model)
            if not cps:
                continue
            agg = across_seeds(select(d["within"], model=model, checkpoint=cps[-1], measure=measure),
                               ("inner_step", "layer"))
            for k in record[1:]:
                cells = {r["layer"]: _ci(r) for r in agg if r["inner_step"] == k}
                rows.append([model, k] + [cells.get(layer, "-") for layer in LAYERS])
        out += [table(["model", "inner step"] + list(LAYERS), rows)]
        out.append(figure(_inner_figure(d, measure, record, figures / f"{experiment}_inner_{measure}.png"),
                          root, f"{measure} to inner step 0 at the final checkpoint, per layer"))
        out.append(figure(_training_figure(d, measure, last, figures / f"{experiment}_training_{measure}.png"),
                          root, f"{measure} step 0 vs {last} through training (MAML vs control)"))
        out.append(figure(_inner_vs_training_figure(d, measure, last,
                                                    figures / f"{experiment}_inner_vs_training_{measure}.png"),
                          root, f"MAML: inner-loop change vs change between consecutive checkpoints ({measure})"))
    return out


def _accuracy_figure(d: dict, path: Path, experiment: str) -> Path | None:
    from callbacks.plots import new_figure

    models = models_with_accuracy(d)
    if not models:
        return None
    fig = new_figure(5, 3.5)
    ax = fig.add_subplot()
    ests = [accuracy(d, m)[0] for m in models]
    ax.bar(models, [e.mean for e in ests], yerr=[(e.high - e.low) / 2 if e.n >= 2 else 0 for e in ests], capsize=4)
    ax.set_ylim(0, 1)
    ax.set_ylabel("meta-test accuracy")
    ax.set_title(experiment)
    return save_figure(fig, path)


def _inner_figure(d: dict, measure: str, record: Sequence[int], path: Path) -> Path:
    from callbacks.plots import new_figure

    fig = new_figure(4.2 * len(MODELS), 3.6)
    for index, model in enumerate(MODELS, 1):
        ax = fig.add_subplot(1, len(MODELS), index)
        cps = checkpoints(d, model)
        if cps:
            agg = across_seeds(select(d["within"], model=model, checkpoint=cps[-1], measure=measure),
                               ("layer", "inner_step"))
            for layer in LAYERS:
                points = [(0, 0.0, 0.0, 0.0)] + [(r["inner_step"], r["mean"], r["low"], r["high"]) for r in agg
                                                 if r["layer"] == layer]
                xs, ys, lo, hi = zip(*sorted(points))
                ax.plot(xs, ys, marker="o", markersize=3, label=layer)
                if all(np.isfinite(lo)) and all(np.isfinite(hi)):
                    ax.fill_between(xs, lo, hi, alpha=0.15)
        ax.set_title(model)
        ax.set_xlabel("inner step")
        ax.set_ylabel(f"{measure} to step 0")
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=8)
    return save_figure(fig, path)


def _training_figure(d: dict, measure: str, last: int, path: Path) -> Path:
    from callbacks.plots import new_figure

    models = [m for m in ("maml", "control") if checkpoints(d, m)] or ["maml"]
    fig = new_figure(4.5 * len(models), 3.6)
    for index, model in enumerate(models, 1):
        ax = fig.add_subplot(1, len(models), index)
        agg = across_seeds(select(d["within"], model=model, inner_step=last, measure=measure), ("layer", "checkpoint"))
        cps = checkpoints(d, model)
        span = max(cps[-1], 1) if cps else 1
        for layer in LAYERS:
            points = sorted((r["checkpoint"] / span, r["mean"]) for r in agg if r["layer"] == layer)
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=layer)
        ax.set_title(model)
        ax.set_xlabel("fraction of training")
        ax.set_ylabel(f"{measure}: step 0 vs {last}")
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=8)
    return save_figure(fig, path)


def _inner_vs_training_figure(d: dict, measure: str, last: int, path: Path) -> Path:
    from callbacks.plots import new_figure

    fig = new_figure(6, 3.6)
    ax = fig.add_subplot()
    cps = checkpoints(d, "maml")[1:]
    within = [r for r in select(d["within"], model="maml", inner_step=last, measure=measure) if r["checkpoint"] in cps]
    between = select(d["between"], model="maml", measure=measure)
    inner = [mean_ci(list(by_seed_mean(select(within, layer=layer)).values())) for layer in LAYERS]
    meta = [mean_ci(list(by_seed_mean(select(between, layer=layer)).values())) for layer in LAYERS]
    x = np.arange(len(LAYERS))
    for offset, ests, label in ((-0.2, inner, f"inner loop (0 vs {last})"), (0.2, meta, "between checkpoints")):
        ax.bar(x + offset, [e.mean for e in ests], width=0.4, label=label,
               yerr=[0 if e.n < 2 else (e.high - e.low) / 2 for e in ests], capsize=3)
    ax.set_xticks(x, LAYERS)
    ax.set_ylabel(f"{measure}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return save_figure(fig, path)
