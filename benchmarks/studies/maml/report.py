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
from benchmarks.studies.maml.analyse import (
    accuracy,
    across_seeds,
    checkpoints,
    models_with_accuracy,
    select,
    task_ci,
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
    rows += [{"experiment": experiment, "kind": "from_init", **r}
             for r in across_seeds(d["from_init"], ("model", "checkpoint", "layer", "measure"))]
    for model in models_with_accuracy(d):
        est, _ = accuracy(d, model)
        rows.append({"experiment": experiment, "model": model, "kind": "test_acc", "mean": est.mean,
                     "low": est.low, "high": est.high, "n": est.n})
    return rows


LABELS = {"control": "control (conventionally trained, vs its start)",
          "finetuned_control": "fine-tuned control (fresh head, every layer in the inner loop)"}


def _experiment_section(config: dict, d: dict, last: int, root: Path, figures: Path) -> list[str]:
    experiment, data, meta, analysis = config["experiment"], config["data"], config["maml"], config["analysis"]
    control = config["control"]
    record = analysis["record_steps"]
    out = [f"## {experiment}: {data['source']} {data['ways']}-way {data['shots']}-shot", "",
           f"{'first' if meta['first_order'] else 'second'}-order meta-gradients, meta-batch "
           f"{meta['meta_batch_size']}, inner lr {meta['inner_lr']} ({meta.get('inner_lr_mode', 'fixed')}), "
           f"{meta['inner_steps']} inner steps in training and {meta['inner_steps_test']} at test, "
           f"{meta['meta_steps']} meta-steps; analysis at {analysis['checkpoints'] + 1} checkpoints on "
           f"{analysis['tasks']} fixed {analysis['split']} tasks (their support sets drive the inner loop) and one "
           f"fixed probe set of {analysis['probes']} {analysis['split']} images (one per class, the same for every "
           f"task and checkpoint), inner steps {record}. Control: the same CNN trained conventionally on every "
           f"training class ({control['epochs']} epochs, Adam lr {control['lr']}); the fine-tuned control adapts it "
           f"from a fresh head with inner lr {control['inner_lr']}.", "", "### Meta-test accuracy", ""]
    acc_rows = []
    for model in models_with_accuracy(d):
        est, tasks = accuracy(d, model)
        published = PUBLISHED.get((data["source"], data["ways"], data["shots"], model))
        interval = f"[{est.low:.4f}, {est.high:.4f}]" if est.n >= 2 else "one seed, no CI"
        within = task_ci(d, model)
        acc_rows.append((LABELS.get(model, model), f"{est.mean:.4f}", interval, est.n, tasks,
                         f"± {within:.4f}" if np.isfinite(within) else "-", f"{published:.3f}" if published else "-"))
    out += [table(("model", "accuracy", "95% CI over seeds", "seeds", "tasks per seed", "95% CI over tasks (per seed)",
                   "published"), acc_rows),
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
                          root, f"{measure} to inner step 0 at the final checkpoint, per layer (mean ± 95% CI "
                          "over seeds)"))
        out += [f"### Change through training ({measure}), final checkpoint vs the start", ""]
        rows = []
        for model in MODELS:
            cps = checkpoints(d, model, "from_init")
            if not cps:
                continue
            agg = across_seeds(select(d["from_init"], model=model, checkpoint=cps[-1], measure=measure), ("layer",))
            cells = {r["layer"]: _ci(r) for r in agg}
            rows.append([LABELS.get(model, model)] + [cells.get(layer, "-") for layer in LAYERS])
        out += [table(["model"] + list(LAYERS), rows)]
        for model in ("maml", "control"):
            if checkpoints(d, model, "from_init"):
                path = _base_figure(d, model, measure, last, figures / f"{experiment}_{model}_base_{measure}.png")
                caption = (f"MAML as the paper's Fig. 1: per layer, {measure} of step 0 vs {last} inner steps (base "
                           "analysis) and of the meta-initialisation vs the one a checkpoint earlier (neighbour "
                           "analysis), over meta-training; mean ± 95% CI over seeds"
                           if model == "maml" else
                           f"The paper's control: per layer, {measure} of the conventionally trained CNN vs its "
                           "start and vs the checkpoint before, over training; mean ± 95% CI over seeds")
                out.append(figure(path, root, caption))
    return out


def _accuracy_figure(d: dict, path: Path, experiment: str) -> Path | None:
    from callbacks.plots import new_figure

    models = models_with_accuracy(d)
    if not models:
        return None
    fig = new_figure(5, 3.5)
    ax = fig.add_subplot()
    ests = [accuracy(d, m)[0] for m in models]
    ax.bar([m.replace("_", "\n") for m in models], [e.mean for e in ests],
           yerr=[(e.high - e.low) / 2 if e.n >= 2 else 0 for e in ests], capsize=4)
    ax.set_ylim(0, 1)
    ax.set_ylabel("meta-test accuracy")
    ax.set_title(experiment)
    return save_figure(fig, path)


def _band(ax, agg: list[dict], x_key: str, label: str, style: str = "-") -> None:
    """A mean curve with its 95% CI band over seeds (no band with one seed)."""
    points = sorted((r[x_key], r["mean"], r["low"], r["high"]) for r in agg)
    if not points:
        return
    xs, ys, lo, hi = zip(*points)
    ax.plot(xs, ys, style, marker="o", markersize=3, label=label)
    if all(np.isfinite(lo)) and all(np.isfinite(hi)):
        ax.fill_between(xs, lo, hi, alpha=0.2)


def _inner_figure(d: dict, measure: str, record: Sequence[int], path: Path) -> Path:
    from callbacks.plots import new_figure

    models = [m for m in MODELS if checkpoints(d, m)] or ["maml"]
    fig = new_figure(4.2 * len(models), 3.6)
    for index, model in enumerate(models, 1):
        ax = fig.add_subplot(1, len(models), index)
        cps = checkpoints(d, model)
        if cps:
            agg = across_seeds(select(d["within"], model=model, checkpoint=cps[-1], measure=measure),
                               ("layer", "inner_step"))
            for layer in LAYERS:
                start = [{"inner_step": 0, "mean": 0.0, "low": 0.0, "high": 0.0}]
                _band(ax, start + [r for r in agg if r["layer"] == layer], "inner_step", layer)
        ax.set_title(model)
        ax.set_xlabel("inner step")
        ax.set_ylabel(f"{measure} to step 0")
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=8)
    return save_figure(fig, path)


def _base_figure(d: dict, model: str, measure: str, last: int, path: Path) -> Path:
    """One panel per layer: the base curve (MAML: inner loop 0 vs ``last``; control: vs its start) and the
    neighbour curve (vs the checkpoint before) against the (meta-)training step, bands over seeds."""
    from callbacks.plots import new_figure

    fig = new_figure(3.2 * len(LAYERS), 3.2)
    if model == "maml":
        base = across_seeds(select(d["within"], model=model, inner_step=last, measure=measure),
                            ("layer", "checkpoint"))
        base_label, xlabel = f"inner loop: step 0 vs {last}", "meta-training step"
    else:
        base = across_seeds(select(d["from_init"], model=model, measure=measure), ("layer", "checkpoint"))
        base_label, xlabel = "vs the start of training", "training step"
    neighbour = across_seeds(select(d["between"], model=model, measure=measure), ("layer", "to"))
    for index, layer in enumerate(LAYERS, 1):
        ax = fig.add_subplot(1, len(LAYERS), index)
        _band(ax, [r for r in base if r["layer"] == layer], "checkpoint", base_label)
        _band(ax, [r for r in neighbour if r["layer"] == layer], "to", "vs the checkpoint before", "--")
        ax.set_title(f"{model}: {layer}")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    fig.axes[0].set_ylabel(measure)
    fig.axes[0].legend(fontsize=7)
    return save_figure(fig, path)
