"""Findings of the what-is-transferred study (STUDIES.md, study 4), each with a verdict computed from runs.

``holds`` when the 95% CI of the effect lies on the claimed side, ``does not hold`` when it lies on the
other side, ``inconclusive`` otherwise (or when the runs it needs have not finished). No verdict is
written in.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from benchmarks.errors import unknown_name
from benchmarks.report import Finding
from benchmarks.stats import Estimate, mean_ci, paired_difference, verdict_greater
from benchmarks.transfer_results import (
    ARM_LABEL,
    Results,
    advantage_by_seed,
    block_label,
    checkpoint_accuracy,
    cka_means,
    combine,
    criticality_table,
    depth_order,
    fmt,
    intact_block,
    no_runs,
    paired,
    scalar_pairs,
)


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


BARRIER_METRICS = ("error", "loss")


def finding_barriers(res: Results, source: str, metric: str, margin: float) -> list[Finding]:
    """No barrier between P-T solutions, a clear one between R-T solutions, on the test ``metric`` barrier."""
    if metric not in BARRIER_METRICS:
        raise unknown_name("findings.barrier_metric", metric, BARRIER_METRICS)
    unit = "accuracy points" if metric == "error" else "nats"
    out = []
    for kind, claim in (("PT-PT", f"[{source}] no barrier between P-T solutions ({metric} barrier < {margin:g})"),
                        ("RT-RT", f"[{source}] a clear barrier between R-T solutions ({metric} barrier > {margin:g})")):
        values = list(scalar_pairs(res, source, f"{metric}_barrier", kind).values())
        if not values:
            out.append(no_runs(claim, "the pairs stage"))
            continue
        est = mean_ci(values)
        verdict = verdict_greater(mean_ci([margin - v for v in values])) if kind == "PT-PT" else \
            verdict_greater(est, margin)
        other = "loss" if metric == "error" else "error"
        other_est = mean_ci(list(scalar_pairs(res, source, f"{other}_barrier", kind).values()))
        min_acc = np.mean(list(scalar_pairs(res, source, "min_acc", kind).values()))
        out.append(Finding(claim, verdict, f"barrier {fmt(est)} {unit}", f"{est.n} seed pairs",
                           f"{other} barrier {fmt(other_est)}; lowest test accuracy on the path {min_acc:.3f}; "
                           "BN recomputed at each lambda"))
    return out


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
        margin = float(cfg["findings"]["barrier_margin"])
        out += finding_barriers(res, source, cfg["findings"]["barrier_metric"], margin)
        out.append(finding_criticality(res, source))
    for source in cfg["checkpoints"]["sources"]:
        out.append(finding_checkpoints(res, source, float(cfg["findings"]["checkpoint_margin"])))
    return out
