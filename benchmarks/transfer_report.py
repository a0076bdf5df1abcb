"""Report of the what-is-transferred study: tables, figures like the paper's, verdicts computed from runs.

Everything here reads finished runs (``metrics.json``; curves from the files the runs wrote next to it)
of the current plan only, so ``make report STUDY=transfer`` works at any time and a verdict always
follows the numbers: no verdict is written in.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import Finding, figure, findings_table, header, save_figure, table, terminal_table, write_csv
from benchmarks.runstore import RunStore, atomic_write_text
from benchmarks.stats import Estimate, mean_ci, paired_difference, verdict_greater

PAIR_KINDS = ("PT-PT", "PT-RT", "RT-RT")
ARM_LABEL = {"pretrained": "P-T", "random": "R-T"}
COLOURS = {"pretrained": "tab:blue", "random": "tab:orange", "PT-PT": "tab:blue", "PT-RT": "tab:green",
           "RT-RT": "tab:orange"}


# ============================================================================================ collect
@dataclass
class Results:
    """Finished runs of the current plan, by stage."""

    cfg: dict
    runs: list[dict]
    planned: int
    by_stage: dict[str, list[dict]] = field(default_factory=dict)

    def stage(self, name: str) -> list[dict]:
        return self.by_stage.get(name, [])

    def train(self, source: str) -> dict[int, dict[str, dict[int, dict]]]:
        """block -> arm -> seed -> metrics of the finished train runs of ``source``."""
        out: dict[int, dict[str, dict[int, dict]]] = defaultdict(lambda: defaultdict(dict))
        for r in self.stage("train"):
            p = r["params"]
            if p["source"] == source:
                out[int(p["block"])][p["init"]][int(p["seed"])] = {**r["metrics"], "_dir": r["dir"]}
        return out


def collect(study, cfg: dict, store: RunStore) -> Results:
    plan = study.plan(cfg)
    keys = {r.key for r in plan}
    runs = [r for r in store.finished_runs() if r["key"] in keys]
    by_stage: dict[str, list[dict]] = defaultdict(list)
    for r in runs:
        by_stage[r["stage"]].append(r)
    return Results(cfg=cfg, runs=runs, planned=len(plan), by_stage=dict(by_stage))


def intact_block(cfg: Mapping[str, Any], source: str) -> int:
    return int(cfg["sources"][source]["image_size"])


def block_label(block: int, size: int) -> str:
    if block == 1:
        return "1 (pixel shuffle)"
    if block == size:
        return f"{block} (intact)"
    return str(block)


def paired(by_seed_a: Mapping[int, float], by_seed_b: Mapping[int, float]) -> tuple[list[float], list[float]]:
    seeds = sorted(set(by_seed_a) & set(by_seed_b))
    return [by_seed_a[s] for s in seeds], [by_seed_b[s] for s in seeds]


def fmt(e: Estimate, signed: bool = False) -> str:
    if e.n == 0:
        return "no runs"
    sign = "+" if signed else ""
    if e.n < 2:
        return f"{e.mean:{sign}.3f} (n=1)"
    return f"{e.mean:{sign}.3f} [{e.low:{sign}.3f}, {e.high:{sign}.3f}]"


def combine(verdicts: Sequence[str]) -> str:
    """All parts hold -> holds; any part does not hold -> does not hold; otherwise inconclusive."""
    if verdicts and all(v == "holds" for v in verdicts):
        return "holds"
    if any(v == "does not hold" for v in verdicts):
        return "does not hold"
    return "inconclusive"


def no_runs(claim: str, what: str) -> Finding:
    return Finding(claim, "inconclusive", "no finished runs", "0", f"needs {what}")


# ============================================================================================ findings
def finding_pt_beats_rt(res: Results, source: str) -> Finding:
    claim = f"[{source}] P-T beats R-T at every block size"
    table_ = res.train(source)
    parts, details, gains = [], [], []
    size = intact_block(res.cfg, source)
    for block in sorted(table_):
        a, b = paired({s: m["test_acc"] for s, m in table_[block].get("pretrained", {}).items()},
                      {s: m["test_acc"] for s, m in table_[block].get("random", {}).items()})
        if not a:
            continue
        gain = paired_difference(a, b)
        verdict = verdict_greater(gain)
        parts.append(verdict)
        gains.append(gain)
        details.append(f"b={block_label(block, size)}: {gain.mean:+.3f} ({verdict})")
    if not parts:
        return no_runs(claim, "train runs of both arms")
    smallest = min(gains, key=lambda g: g.mean)
    return Finding(claim, combine(parts), f"smallest gain {fmt(smallest, True)}",
                   f"{len(parts)} block sizes x {smallest.n} seeds", "; ".join(details))


def advantage_by_seed(table_: Mapping, block: int) -> dict[int, float]:
    pt, rt = table_.get(block, {}).get("pretrained", {}), table_.get(block, {}).get("random", {})
    return {s: pt[s]["test_acc"] - rt[s]["test_acc"] for s in set(pt) & set(rt)}


def finding_advantage_shrinks(res: Results, source: str) -> Finding:
    claim = f"[{source}] P-T's advantage shrinks as blocks get smaller (intact vs b=1)"
    table_ = res.train(source)
    size = intact_block(res.cfg, source)
    blocks = sorted(table_)
    if len(blocks) < 2 or size not in table_:
        return no_runs(claim, "train runs at the intact size and a smaller block size")
    small = blocks[0]
    big, tiny = paired(advantage_by_seed(table_, size), advantage_by_seed(table_, small))
    if not big:
        return no_runs(claim, "both arms at both block sizes")
    effect = paired_difference(big, tiny)
    return Finding(claim, verdict_greater(effect), f"{fmt(effect, True)}", f"{effect.n} seeds",
                   f"P-T - R-T accuracy: intact {np.mean(big):+.3f}, b={small}: {np.mean(tiny):+.3f}")


def finding_faster(res: Results, source: str, speed_epochs: int) -> Finding:
    claim = f"[{source}] P-T trains faster even where its accuracy gain vanishes"
    table_ = res.train(source)
    vanished = []
    for block in sorted(table_):
        a, b = paired({s: m["test_acc"] for s, m in table_[block].get("pretrained", {}).items()},
                      {s: m["test_acc"] for s, m in table_[block].get("random", {}).items()})
        if a and verdict_greater(paired_difference(a, b)) != "holds":
            vanished.append(block)
    blocks = vanished or sorted(table_)[:1]
    if not blocks:
        return no_runs(claim, "train runs of both arms")
    per_seed: dict[int, list[float]] = defaultdict(list)
    for block in blocks:
        pt, rt = table_[block].get("pretrained", {}), table_[block].get("random", {})
        for s in set(pt) & set(rt):
            per_seed[s].append(pt[s]["speed_train_acc"] - rt[s]["speed_train_acc"])
    complete = [np.mean(v) for s, v in sorted(per_seed.items()) if len(v) == len(blocks)]
    if not complete:
        return no_runs(claim, "both arms at the same block sizes")
    effect = mean_ci(complete)
    where = "blocks without a significant accuracy gain" if vanished else "the smallest block (every gain held)"
    return Finding(claim, verdict_greater(effect), fmt(effect, True), f"{effect.n} seeds",
                   f"mean training accuracy over the first {speed_epochs} epochs, P-T - R-T, averaged over "
                   f"{where}: b={blocks}")


def pair_values(res: Results, source: str, prefix: str, kind: str, reduce: Callable[[list[float]], float]
                ) -> dict[str, float]:
    """pair "i-j" -> reduce(values of metrics "<prefix>/<kind>/<i-j>/...") from the source's pairs run."""
    out: dict[str, list[float]] = defaultdict(list)
    for r in res.stage("pairs"):
        if r["params"]["source"] != source:
            continue
        for key, value in r["metrics"].items():
            parts = key.split("/")
            if len(parts) >= 3 and parts[0] == prefix and parts[1] == kind:
                out[parts[2]].append(float(value))
    return {pair: reduce(values) for pair, values in out.items()}


def _layer_mean(metric_prefix: str):
    return lambda values: float(np.mean(values))


def cka_means(res: Results, source: str, kind: str) -> dict[str, float]:
    """Mean CKA over layers per pair (keys cka/<kind>/<pair>/<layer>)."""
    return pair_values(res, source, "cka", kind, lambda v: float(np.mean(v)))


def scalar_pairs(res: Results, source: str, prefix: str, kind: str, suffix: str | None = None) -> dict[str, float]:
    out = {}
    for r in res.stage("pairs"):
        if r["params"]["source"] != source:
            continue
        for key, value in r["metrics"].items():
            parts = key.split("/")
            if parts[0] == prefix and parts[1] == kind and (suffix is None or parts[-1] == suffix):
                out[parts[2]] = float(value)
    return out


def finding_similarity(res: Results, source: str) -> list[Finding]:
    cka_claim = f"[{source}] two P-T runs are more similar (mean CKA over layers) than two R-T runs"
    l2_claim = f"[{source}] two P-T runs are closer in weight space (l2) than two R-T runs"
    pt, rt = paired(cka_means(res, source, "PT-PT"), cka_means(res, source, "RT-RT"))
    findings = []
    if pt:
        effect = paired_difference(pt, rt)
        findings.append(Finding(cka_claim, verdict_greater(effect), fmt(effect, True), f"{effect.n} seed pairs",
                                f"mean CKA P-T/P-T {np.mean(pt):.3f}, R-T/R-T {np.mean(rt):.3f} "
                                "(pairs share runs: the CI is optimistic)"))
    else:
        findings.append(no_runs(cka_claim, "the pairs stage"))
    pt_l2, rt_l2 = paired(scalar_pairs(res, source, "l2", "PT-PT", "total"),
                          scalar_pairs(res, source, "l2", "RT-RT", "total"))
    if pt_l2:
        effect = paired_difference(rt_l2, pt_l2)
        findings.append(Finding(l2_claim, verdict_greater(effect), f"R-T - P-T distance {fmt(effect, True)}",
                                f"{effect.n} seed pairs",
                                f"l2 P-T/P-T {np.mean(pt_l2):.2f}, R-T/R-T {np.mean(rt_l2):.2f}"))
    else:
        findings.append(no_runs(l2_claim, "the pairs stage"))
    return findings


def finding_barriers(res: Results, source: str, margin: float) -> list[Finding]:
    pt = list(scalar_pairs(res, source, "loss_barrier", "PT-PT").values())
    rt = list(scalar_pairs(res, source, "loss_barrier", "RT-RT").values())
    no_claim = f"[{source}] no barrier between P-T solutions (loss barrier < {margin:g})"
    yes_claim = f"[{source}] a clear barrier between R-T solutions (loss barrier > {margin:g})"
    out = []
    if pt:
        est = mean_ci(pt)
        below = verdict_greater(mean_ci([margin - b for b in pt]))
        min_acc = list(scalar_pairs(res, source, "min_acc", "PT-PT").values())
        out.append(Finding(no_claim, below, f"barrier {fmt(est)}", f"{est.n} seed pairs",
                           f"lowest test accuracy on the path {np.mean(min_acc):.3f}; BN recomputed at each lambda"))
    else:
        out.append(no_runs(no_claim, "the pairs stage"))
    if rt:
        est = mean_ci(rt)
        min_acc = list(scalar_pairs(res, source, "min_acc", "RT-RT").values())
        out.append(Finding(yes_claim, verdict_greater(est, margin), f"barrier {fmt(est)}", f"{est.n} seed pairs",
                           f"lowest test accuracy on the path {np.mean(min_acc):.3f}; BN recomputed at each lambda"))
    else:
        out.append(no_runs(yes_claim, "the pairs stage"))
    return out


def criticality_table(res: Results, source: str) -> dict[str, dict[int, dict[str, dict[str, float]]]]:
    """arm -> seed -> module -> {"criticality", "rewind_error", "depth", "distance"}."""
    out: dict[str, dict[int, dict[str, dict[str, float]]]] = defaultdict(dict)
    for r in res.stage("criticality"):
        p = r["params"]
        if p["source"] != source:
            continue
        modules: dict[str, dict[str, float]] = defaultdict(dict)
        for key, value in r["metrics"].items():
            parts = key.split("/")
            if len(parts) == 2 and parts[0] in ("criticality", "rewind_error", "depth", "distance"):
                modules[parts[1]][parts[0]] = float(value) if value is not None else math.inf
        out[p["init"]][int(p["seed"])] = dict(modules)
    return out


def depth_order(modules: Mapping[str, Mapping[str, float]]) -> list[str]:
    return sorted(modules, key=lambda m: modules[m].get("depth", 0))


def finding_criticality(res: Results, source: str) -> Finding:
    from scipy.stats import spearmanr

    claim = f"[{source}] lower layers are less critical than higher ones (criticality rises with depth)"
    table_ = criticality_table(res, source)
    rhos, per_arm = [], defaultdict(list)
    for arm, seeds in table_.items():
        for _seed, modules in seeds.items():
            order = depth_order(modules)
            values = [modules[m].get("criticality", math.nan) for m in order]
            finite = [v if math.isfinite(v) else 1e300 for v in values]
            if len(set(finite)) < 2:
                continue
            rho = float(spearmanr(range(len(order)), finite).statistic)
            rhos.append(rho)
            per_arm[arm].append(rho)
    if not rhos:
        return no_runs(claim, "criticality runs whose modules differ")
    effect = mean_ci(rhos)
    detail = ", ".join(f"{ARM_LABEL.get(a, a)} mean rho {np.mean(v):+.2f} (n={len(v)})" for a, v in per_arm.items())
    return Finding(claim, verdict_greater(effect), f"Spearman rho(depth, criticality) {fmt(effect, True)}",
                   f"{effect.n} runs", detail)


def checkpoint_accuracy(res: Results, source: str) -> dict[int, dict[int, dict]]:
    """pretraining step -> seed -> metrics; the last step is the intact P-T train run."""
    from benchmarks.transfer_training import checkpoint_steps

    out: dict[int, dict[int, dict]] = defaultdict(dict)
    for r in res.stage("checkpoint"):
        p = r["params"]
        if p["source"] == source:
            out[int(p["step"])][int(p["seed"])] = r["metrics"]
    last = checkpoint_steps(res.cfg["sources"][source]["pretrain"])[-1]
    seeds = {int(s) for s in res.cfg["checkpoints"]["seeds"]}
    intact = res.train(source).get(intact_block(res.cfg, source), {}).get("pretrained", {})
    for seed, metrics in intact.items():
        if seed in seeds:
            out[last][seed] = metrics
    return dict(out)


def finding_checkpoints(res: Results, source: str, margin: float) -> Finding:
    from benchmarks.transfer_training import checkpoint_steps

    claim = (f"[{source}] the best downstream result need not come from the last pretraining checkpoint "
             f"(an earlier one within {margin:g})")
    table_ = checkpoint_accuracy(res, source)
    last = checkpoint_steps(res.cfg["sources"][source]["pretrain"])[-1]
    if last not in table_ or len(table_) < 2:
        return no_runs(claim, "checkpoint runs and the intact P-T runs")
    final = {s: m["test_acc"] for s, m in table_[last].items()}
    best: tuple[float, int, Estimate] | None = None
    for step, seeds in table_.items():
        if step == last:
            continue
        a, b = paired({s: m["test_acc"] for s, m in seeds.items()}, final)
        if not a:
            continue
        diff = paired_difference(a, b)
        if best is None or diff.mean > best[0]:
            best = (diff.mean, step, diff)
    if best is None:
        return no_runs(claim, "checkpoint runs with the seeds of the intact P-T runs")
    _, step, diff = best
    means = ", ".join(f"step {s}: {np.mean([m['test_acc'] for m in table_[s].values()]):.3f}" for s in sorted(table_))
    return Finding(claim, verdict_greater(diff, -margin), f"best earlier (step {step}) - last {fmt(diff, True)}",
                   f"{diff.n} seeds", f"{means} (the best earlier step is picked on the same runs)")


def findings(res: Results) -> list[Finding]:
    cfg = res.cfg
    out: list[Finding] = []
    for source in cfg["use_sources"]:
        speed_epochs = int(cfg["sources"][source]["train"]["speed_epochs"])
        out += [finding_pt_beats_rt(res, source), finding_advantage_shrinks(res, source),
                finding_faster(res, source, speed_epochs)]
    for source in cfg["analysis"]["sources"]:
        out += finding_similarity(res, source)
        out += finding_barriers(res, source, float(cfg["findings"]["barrier_margin"]))
        out.append(finding_criticality(res, source))
    for source in cfg["checkpoints"]["sources"]:
        out.append(finding_checkpoints(res, source, float(cfg["findings"]["checkpoint_margin"])))
    return out


# ============================================================================================ figures
def new_figure(width: float, height: float):
    from callbacks.plots import new_figure as _new

    return _new(width, height)


def accuracy_figure(res: Results, source: str):
    """Paper's figure 2: final test accuracy vs block size (P-T vs R-T) and training speed."""
    table_ = res.train(source)
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
            low = np.array([e.low if e.n > 1 else e.mean for e in est if e.n])
            high = np.array([e.high if e.n > 1 else e.mean for e in est if e.n])
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


def speed_figure(res: Results, source: str):
    """Training accuracy per epoch, P-T vs R-T, for the intact images and the smallest blocks."""
    table_ = res.train(source)
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
            ax.bar(xs, means, width, yerr=errs, capsize=2, color=COLOURS[kind], label=kind.replace("PT", "P-T")
                   .replace("RT", "R-T"))
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
            label = kind.replace("PT", "P-T").replace("RT", "R-T")
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


def criticality_figure(res: Results, source: str):
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
    fig = new_figure(3.3 * len(modules), 3.2 * len(arms))
    for i, arm in enumerate(arms):
        seed, data = chosen[arm]
        for j, name in enumerate(modules):
            m = data["modules"][name]
            ax = fig.add_subplot(len(arms), len(modules), i * len(modules) + j + 1)
            draw_heatmap(ax, np.array(m["error"]), [f"{a:g}" for a in m["alphas"]], [f"{s:g}" for s in m["sigmas"]],
                         cbar_label="train error", vmin=0.0, vmax=1.0, cmap="magma", annotate=False)
            crit = m["criticality"]
            crit_text = "inf" if crit is None or not math.isfinite(crit) else f"{crit:.3g}"
            ax.set_title(f"{ARM_LABEL[arm]} s{seed} {name}\ncriticality {crit_text}", fontsize=8)
            ax.set_xlabel(f"σ ({data['noise']})", fontsize=7)
            ax.set_ylabel("α (θ0→θf)", fontsize=7)
    fig.suptitle(f"{source}: module criticality (training error; ε = {next(iter(chosen.values()))[1]['epsilon']:g} "
                 "above the final error passes)")
    return fig


def checkpoint_figure(res: Results, source: str):
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
        ax.plot(steps, accs, marker="s", linestyle="--", color="grey", label="source (Fashion-MNIST) accuracy")
    ax.set_xscale("symlog", linthresh=max(1, steps[1] if len(steps) > 1 else 1))
    ax.set_xlabel("pretraining step of the checkpoint")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{source}: fine-tuning from checkpoints through pretraining", fontsize=10)
    return fig


# ============================================================================================ tables
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
        rows.append([kind.replace("PT", "P-T").replace("RT", "R-T")] + [fmt(mean_ci(v)) for v in values.values()]
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


# ============================================================================================ report
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


BLOCK_HEADERS = ["source", "block size b", "P-T test acc", "R-T test acc", "P-T - R-T", "speed P-T - R-T",
                 "runs P-T/R-T"]


def write_report(study, cfg: dict, store: RunStore) -> Path:
    res = collect(study, cfg, store)
    root = store.root
    figs = build_figures(res, root / "figures")
    found = findings(res)
    lines = [header("What is being transferred? (study 4: Neyshabur, Sedghi & Zhang, NeurIPS 2020)", cfg, res.runs)]
    lines += [f"{len(res.runs)} of {res.planned} planned runs have finished.\n", "## Findings\n",
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
                  table(["layer"] + [f"CKA {k}" for k in PAIR_KINDS] + [f"l2 {k}" for k in PAIR_KINDS], rows)]
        if f"{source}_cka" in figs:
            lines.append(figure(figs[f"{source}_cka"], root, f"{source}: CKA and l2 distance per layer"))
        lambdas = cfg["analysis"]["lambdas"]
        bn = cfg["analysis"]["bn_batches"]
        lines += [f"## 3. Performance barriers ({source})\n",
                  f"All weights are interpolated, θ(λ) = (1-λ)θ_a + λθ_b, at {lambdas} evenly spaced λ; "
                  "**BatchNorm running statistics are recomputed at every λ** (reset, then a cumulative average "
                  f"over {'all' if bn is None else bn} training batches in train mode) before the test set is "
                  "evaluated. Barrier = max over λ of the test loss (error) minus the straight line between the "
                  "end points' values.\n",
                  table(["pair", "loss barrier", "error barrier", "lowest accuracy on the path", "end-point accuracy",
                         "pairs"], barrier_rows(res, source))]
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
                  table(["module", "criticality P-T (median)", "criticality R-T (median)", "rewind error P-T",
                         "rewind error R-T"], criticality_rows(res, source))]
        if f"{source}_criticality" in figs:
            lines.append(figure(figs[f"{source}_criticality"], root, f"{source}: criticality heatmaps"))
    for source in cfg["checkpoints"]["sources"]:
        lines += [f"## 5. Fine-tuning from pretraining checkpoints ({source})\n",
                  "Downstream training (intact images) from source weights taken at steps through pretraining "
                  "(step 0 = the source init; the last step is the intact P-T run of section 1).\n",
                  table(["pretraining step", "source accuracy", "downstream test acc", "downstream speed", "runs"],
                        checkpoint_rows(res, source))]
        if f"{source}_checkpoints" in figs:
            lines.append(figure(figs[f"{source}_checkpoints"], root, f"{source}: downstream vs checkpoint"))
    lines += ["## Run time by stage\n", table(["stage", "runs", "wall time (min)"], stage_times(res)),
              "Re-run one run alone: `python -m benchmarks rerun results/transfer/<run-key>`; rebuild this "
              "report: `python -m benchmarks report transfer --profile <profile>`.\n"]
    path = root / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


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
VERDICT_CODE = {"holds": 1.0, "inconclusive": 0.0, "does not hold": -1.0}


def log_aggregate(study, run, ctx) -> dict[str, float]:
    """The aggregate run: write the report, log its tables, figures and verdicts to W&B."""
    import wandb

    cfg = run.config["study_config"]
    path = write_report(study, cfg, ctx.store)
    res = collect(study, cfg, ctx.store)
    found = findings(res)
    experiment = ctx.loggers()[0].experiment
    experiment.log({"findings": wandb.Table(columns=["finding", "verdict", "effect", "n", "detail"],
                                            data=[[f.claim, f.verdict, f.effect, f.n, f.detail] for f in found])})
    experiment.log({"block/table": wandb.Table(columns=BLOCK_HEADERS, data=[
        [str(v) for v in row] for source in cfg["use_sources"] for row in block_rows(res, source)])})
    # accuracy against block size with its own x-axis
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
    metrics = {f"verdict/{i}": VERDICT_CODE[f.verdict] for i, f in enumerate(found)}
    experiment.summary.update({f"verdict/{i}": f.verdict for i, f in enumerate(found)})
    return metrics
