"""Study 4: what is being transferred in transfer learning? (``make bench-transfer``)

After Neyshabur, Sedghi & Zhang, "What is being transferred in transfer learning?" (NeurIPS 2020).
Protocol (/work/shared/STUDIES.md, study 4), as stages of runs:

1. ``pretrain`` (per conv4 source): conv4 with BatchNorm learns Fashion-MNIST; weights are kept at
   several steps through pretraining. The ``imagenet`` source needs no run: it is the real
   EfficientNet-Lite0 trained on ImageNet-1k (modules/nets/imagenet.py), in timm's layout.
2. ``train`` (source x arm x block size x seed): the downstream glyph task, learnt from the source
   weights with a fresh head (P-T, arm ``pretrained``) or from a random init (R-T, arm ``random``),
   on images cut into b x b blocks permuted by one fixed permutation per run (after normalisation,
   the same for train and test; b = 1 is the full pixel shuffle, b = image side the intact image).
   Records test accuracy and training speed (accuracy over the first epochs).
3. ``pairs`` (per analysed source): on the intact task, for every two seeds i < j, P-T/P-T, P-T/R-T
   and R-T/R-T: linear CKA per layer, l2 distance of the weights, and the test loss/error along the
   straight line between the two solutions, BatchNorm statistics recomputed at every lambda, with
   the barrier height.
4. ``criticality`` (per analysed source x arm x seed): module criticality per layer group between
   theta0 (pretrained weights for P-T, the init for R-T) and the final weights.
5. ``checkpoint`` (per conv4 source x pretraining checkpoint x seed): fine-tuning from weights taken
   through pretraining (the last checkpoint is the intact P-T run of stage 2).
6. ``aggregate``: the report's tables, figures and verdicts, also logged to W&B.

Everything goes to W&B (group "transfer", job type = stage) and to results/transfer/report.md.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import yaml

from benchmarks.errors import UserError, unknown_name
from benchmarks.runstore import RunStore
from benchmarks.study import Run, RunContext, Study

STAGES = ("pretrain", "train", "pairs", "criticality", "checkpoint", "aggregate")


# ============================================================================================ config
def source_config(cfg: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The resolved settings of one source (model, pretraining, block sizes, downstream training)."""
    sources = cfg["sources"]
    if name not in sources:
        raise unknown_name("source", name, sources)
    return dict(sources[name])


def source_seeds(cfg: Mapping[str, Any], name: str) -> list[int]:
    seeds = cfg["sources"][name].get("seeds") or cfg["seeds"]
    return [int(s) for s in seeds]


def check_config(cfg: Mapping[str, Any]) -> None:
    """Fail early, with the fix, on settings that cannot work."""
    from benchmarks.transfer_training import BACKBONE_KINDS

    for key in ("seeds", "use_sources", "sources", "target", "analysis", "checkpoints", "findings"):
        if key not in cfg:
            raise UserError(f'the transfer config has no "{key}" section',
                            "start from benchmarks/configs/transfer/tiny.yaml")
    for name in cfg["use_sources"]:
        src = source_config(cfg, name)
        if src.get("kind") not in BACKBONE_KINDS:
            raise unknown_name(f"kind of source {name}", str(src.get("kind")), BACKBONE_KINDS)
        size = int(src["image_size"])
        bad = [b for b in src["block_sizes"] if int(b) < 1 or size % int(b)]
        if bad:
            divisors = [d for d in range(1, size + 1) if size % d == 0]
            raise UserError(f"block sizes {bad} of source {name} do not tile images of side {size}",
                            f"use divisors of {size}: {divisors}")
        if size not in [int(b) for b in src["block_sizes"]]:
            raise UserError(f"the block sizes of source {name} lack {size} (the intact image), which the "
                            "similarity, barrier and criticality analyses use",
                            f"add {size} to sources.{name}.block_sizes")
        if len(source_seeds(cfg, name)) < 2:
            raise UserError(f"source {name} has fewer than 2 seeds; P-T vs R-T needs two independent runs "
                            "per arm", "list at least two seeds (three for confidence intervals)")
    threads = cfg.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise UserError(f"threads={threads!r} must be a whole number >= 1 (intra-op threads per run) or null "
                        "(torch's default)", "set threads: 1 (fastest on a shared CPU) or threads: null")
    if cfg["findings"].get("barrier_metric") not in ("error", "loss"):
        raise unknown_name("findings.barrier_metric", str(cfg["findings"].get("barrier_metric")), ("error", "loss"))
    for group in ("analysis", "checkpoints"):
        for name in cfg[group]["sources"]:
            if name not in cfg["use_sources"]:
                raise UserError(f'{group}.sources names "{name}", which use_sources does not run',
                                f"add it to use_sources or remove it from {group}.sources")
    for name in cfg["checkpoints"]["sources"]:
        if cfg["sources"][name]["kind"] != "conv4":
            raise UserError(f"checkpoints.sources names {name}, whose weights are not pretrained here",
                            "list conv4 sources only (the ImageNet weights come without checkpoints)")
        missing = set(int(s) for s in cfg["checkpoints"]["seeds"]) - set(source_seeds(cfg, name))
        if missing:
            raise UserError(f"checkpoints.seeds {sorted(missing)} are not seeds of source {name}",
                            "use seeds of the train stage (the last checkpoint reuses its runs)")


MODEL_KEYS = ("kind", "backbone", "in_channels", "image_size", "hidden", "allow_download")
PAIR_KEYS = ("probe_size", "lambdas", "bn_batches")


def run_source(src: Mapping[str, Any], *parts: str) -> dict[str, Any]:
    """What of a source a run depends on: its model and the named parts (pretrain, train).

    Grid-defining lists (block sizes, seeds) stay out, so adding a block size or a seed leaves the
    keys of finished runs unchanged and they are not redone.
    """
    return {k: src[k] for k in (*MODEL_KEYS, *parts) if k in src}


def _digest(items: list[str]) -> str:
    return hashlib.sha1(json.dumps(sorted(items)).encode()).hexdigest()[:12]


def intact(src: Mapping[str, Any]) -> int:
    """The block size that leaves the image intact (its side)."""
    return int(src["image_size"])


# ============================================================================================ study
class TransferStudy(Study):
    """Block shuffle, feature similarity, barriers, module criticality and pretraining checkpoints."""

    name = "transfer"

    # -- plan ----------------------------------------------------------------------------------------
    def plan(self, cfg: dict) -> list[Run]:
        from benchmarks.transfer_training import ARMS, checkpoint_steps

        check_config(cfg)
        target = cfg["target"]
        threads = cfg.get("threads")
        runs: list[Run] = []
        pretrain_key: dict[str, str] = {}
        train_key: dict[tuple, str] = {}
        trained: dict[str, dict[str, Any]] = {}  # what a downstream run of each source depends on
        for name in cfg["use_sources"]:
            src = source_config(cfg, name)
            trained[name] = run_source(src, "pretrain", "train")
            if src["kind"] == "conv4":
                run = Run(self.name, "pretrain", {"source": name},
                          {"source": run_source(src, "pretrain"), "seed": src["pretrain"]["seed"], "threads": threads})
                runs.append(run)
                pretrain_key[name] = run.key
        for name in cfg["use_sources"]:
            src = source_config(cfg, name)
            for block in sorted({int(b) for b in src["block_sizes"]}):
                for arm in ARMS:
                    for seed in source_seeds(cfg, name):
                        needs = (pretrain_key[name],) if arm == "pretrained" and name in pretrain_key else ()
                        run = Run(self.name, "train", {"source": name, "init": arm, "block": block, "seed": seed},
                                  {"source": trained[name], "target": target, "threads": threads}, needs)
                        runs.append(run)
                        train_key[(name, arm, block, seed)] = run.key
        for name in cfg["analysis"]["sources"]:
            src = source_config(cfg, name)
            members = [train_key[(name, arm, intact(src), s)] for arm in ARMS for s in source_seeds(cfg, name)]
            pair_cfg = {k: cfg["analysis"][k] for k in PAIR_KEYS}
            runs.append(Run(self.name, "pairs", {"source": name},
                            {"source": trained[name], "target": target, "analysis": pair_cfg, "runs": sorted(members),
                             "threads": threads}, tuple(members)))
            for arm in ARMS:
                for seed in source_seeds(cfg, name):
                    of = train_key[(name, arm, intact(src), seed)]
                    runs.append(Run(self.name, "criticality", {"source": name, "init": arm, "seed": seed},
                                    {"source": trained[name], "target": target, "threads": threads,
                                     "criticality": dict(cfg["analysis"]["criticality"]), "of": of}, (of,)))
        for name in cfg["checkpoints"]["sources"]:
            src = source_config(cfg, name)
            for step in checkpoint_steps(src["pretrain"])[:-1]:  # the last one is the intact P-T run
                for seed in cfg["checkpoints"]["seeds"]:
                    runs.append(Run(self.name, "checkpoint", {"source": name, "step": step, "seed": int(seed)},
                                    {"source": trained[name], "target": target, "threads": threads},
                                    (pretrain_key[name],)))
        needs = tuple(r.key for r in runs)
        runs.append(Run(self.name, "aggregate", {}, {"study_config": cfg, "inputs": _digest(list(needs))}, needs))
        return runs

    # -- execute -------------------------------------------------------------------------------------
    def execute(self, run: Run, ctx: RunContext) -> dict[str, float]:
        import benchmarks.transfer_training as training

        if run.config.get("threads"):
            # few intra-op threads: on a shared CPU, more threads than free cores mostly spin and wait
            torch.set_num_threads(int(run.config["threads"]))
        src = run.config["source"] if "source" in run.config else None
        if run.stage == "pretrain":
            return training.pretrain_source(run, ctx)
        if run.stage == "train":
            state = None
            if run.params["init"] == "pretrained":
                pre = ctx.output_of(run.needs[0]) if run.needs else None
                state = training.source_weights(src, pre)
            return training.train_downstream(run, ctx, state, run.params["init"], int(run.params["block"]))
        if run.stage == "checkpoint":
            state = training.source_weights(src, ctx.output_of(run.needs[0]), int(run.params["step"]))
            return training.train_downstream(run, ctx, state, "pretrained", intact(src))
        if run.stage == "pairs":
            return run_pairs(run, ctx)
        if run.stage == "criticality":
            return run_criticality(run, ctx)
        if run.stage == "aggregate":
            return self.aggregate(run, ctx)
        raise unknown_name("stage", run.stage, STAGES)

    def aggregate(self, run: Run, ctx: RunContext) -> dict[str, float]:
        """Write the report from the finished runs and log its tables, figures and verdicts to W&B."""
        from benchmarks.transfer_report import log_aggregate

        return log_aggregate(self, run, ctx)

    # -- report --------------------------------------------------------------------------------------
    def report(self, cfg: dict, store: RunStore) -> Path:
        from benchmarks.transfer_report import write_report

        return write_report(self, cfg, store)

    def summary_lines(self, cfg: dict, store: RunStore) -> list[str]:
        from benchmarks.transfer_report import summary_lines

        return summary_lines(self, cfg, store)


# ============================================================================================ analysis stages
def run_outputs(ctx: RunContext):
    """``callbacks.run_outputs.RunOutputs`` for a run without a Trainer (files in the run dir + W&B)."""
    from benchmarks.study import global_rank
    from callbacks.run_outputs import RunOutputs

    rank = global_rank()  # under DDP every rank analyses; only rank 0 writes files and W&B
    shim = SimpleNamespace(is_global_zero=rank == 0, global_rank=rank, default_root_dir=str(ctx.run_dir),
                           loggers=ctx.loggers())
    return RunOutputs(shim, ctx.run_dir)


def _member(ctx: RunContext, key: str) -> tuple[dict, Path]:
    run_dir = ctx.output_of(key)
    return yaml.safe_load((run_dir / "run.yaml").read_text())["params"], run_dir


def _intact_data(run: Run):
    """The intact target task: the datamodule, training data in a fixed order, test data."""
    from benchmarks.transfer_training import seeded_loader, target_datamodule

    src, target = run.config["source"], run.config["target"]
    dm = target_datamodule(target, src, intact(src), 0)
    dm.setup()
    train = seeded_loader(dm.dataset("train"), int(src["train"]["batch_size"]), None)
    test = seeded_loader(dm.dataset("test"), 256, None)
    return dm, train, test


def run_pairs(run: Run, ctx: RunContext) -> dict[str, float]:
    """CKA per layer, l2 distances and interpolation barriers for every pair of intact runs."""
    from benchmarks.transfer_analysis import PAIR_KINDS, compare_pair, pairs_of
    from benchmarks.transfer_figures import cka_figure
    from benchmarks.transfer_training import load_net
    from callbacks.interpolation import report_interpolation
    from callbacks.probe import select_probe

    analysis = run.config["analysis"]
    dm, train, test = _intact_data(run)
    probe = select_probe(dm.dataset("test"), int(analysis["probe_size"]), seed=0).inputs
    members: dict[str, dict[int, str]] = {}
    dirs: dict[str, Path] = {}
    for key in run.needs:
        params, run_dir = _member(ctx, key)
        members.setdefault(params["init"], {})[int(params["seed"])] = key
        dirs[key] = run_dir
    first = dirs[run.needs[0]]
    template = load_net(run.config["source"], dm.num_classes, first / "final.pt")
    outputs = run_outputs(ctx)
    limit = run.config["target"].get("limit_batches")
    metrics: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    layers: list[str] = []
    for kind, i, j, key_a, key_b in pairs_of(members):
        state_a = torch.load(dirs[key_a] / "final.pt", weights_only=True)
        state_b = torch.load(dirs[key_b] / "final.pt", weights_only=True)
        result = compare_pair(template, state_a, state_b, probe, test, train, lambdas=int(analysis["lambdas"]),
                              bn_batches=analysis.get("bn_batches"), max_batches=limit)
        pair = f"{i}-{j}"
        layers = list(result.cka)
        report_interpolation(outputs, result.interpolation, name=f"interp/{kind}/{pair}")
        curve = result.interpolation
        metrics[f"loss_barrier/{kind}/{pair}"] = float(curve.loss_barrier)
        metrics[f"error_barrier/{kind}/{pair}"] = float(curve.error_barrier)
        metrics[f"min_acc/{kind}/{pair}"] = 1.0 - max(curve.error)
        metrics[f"end_acc/{kind}/{pair}"] = 1.0 - 0.5 * (curve.error[0] + curve.error[-1])
        for index, layer in enumerate(layers):
            metrics[f"cka/{kind}/{pair}/{layer}"] = result.cka[layer]
            metrics[f"l2/{kind}/{pair}/{layer}"] = result.l2[layer]
            rows.append({"kind": kind, "pair": pair, "layer": layer, "layer_index": index,
                         "cka": result.cka[layer], "l2": result.l2[layer]})
        metrics[f"l2/{kind}/{pair}/total"] = result.l2["total"]
    # per-layer curves against the layer index, one line per pair kind (mean over pairs)
    outputs.define_curve("cka", "cka/layer_index", [f"cka/{k}" for k in PAIR_KINDS])
    outputs.define_curve("l2", "l2/layer_index", [f"l2/{k}" for k in PAIR_KINDS])
    for index, layer in enumerate(layers):
        row: dict[str, float] = {"cka/layer_index": index, "l2/layer_index": index}
        for kind in PAIR_KINDS:
            values = [r for r in rows if r["kind"] == kind and r["layer"] == layer]
            if values:
                row[f"cka/{kind}"] = sum(r["cka"] for r in values) / len(values)
                row[f"l2/{kind}"] = sum(r["l2"] for r in values) / len(values)
        outputs.log(row)
    outputs.table("pairs/per_layer", rows)
    outputs.csv("pairs.csv", rows)
    outputs.figure("cka.png", cka_figure(rows, layers), wandb_key="cka/bars")
    outputs.summary({k: v for k, v in metrics.items() if "barrier" in k or "/total" in k})
    outputs.json("pairs.json", {"bn_recomputed": True, "lambdas": int(analysis["lambdas"]), "rows": rows})
    return metrics


def run_criticality(run: Run, ctx: RunContext) -> dict[str, float]:
    """Module criticality of one intact run (theta0 = its init.pt, thetaf = its final.pt)."""
    from benchmarks.transfer_analysis import criticality
    from benchmarks.transfer_training import load_net
    from callbacks.criticality import report_criticality

    dm, train, _test = _intact_data(run)
    run_dir = ctx.output_of(run.config["of"])
    template = load_net(run.config["source"], dm.num_classes, run_dir / "final.pt")
    theta0 = torch.load(run_dir / "init.pt", weights_only=True)
    thetaf = torch.load(run_dir / "final.pt", weights_only=True)
    options = run.config["criticality"]
    result = criticality(template, theta0, thetaf, train, options, seed=ctx.seed,
                         max_batches=run.config["target"].get("limit_batches"))
    result.extra["theta0"] = "pretrained weights + fresh head" if run.params["init"] == "pretrained" else "random init"
    report_criticality(run_outputs(ctx), result, name="crit")
    metrics: dict[str, float] = {"reference_error": float(result.reference_error)}
    for depth, (name, module) in enumerate(result.modules.items()):
        metrics[f"depth/{name}"] = float(depth)
        metrics[f"criticality/{name}"] = float(module.criticality)
        i0 = module.alphas.index(min(module.alphas))
        j0 = module.sigmas.index(min(module.sigmas))
        metrics[f"rewind_error/{name}"] = float(module.error[i0][j0])
        metrics[f"distance/{name}"] = math.sqrt(module.distance_sq)
    return metrics
