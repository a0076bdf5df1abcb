"""Run a whole benchmark: plan, skip what is finished, resume what was interrupted, report.

Safe under DDP/SLURM multi-process launches: every rank plans the same runs and trains them
together; only global rank 0 writes the run store. Ctrl-C marks the current run interrupted and
keeps its last checkpoint; running the same command again resumes it.
"""

from __future__ import annotations

import signal
import sys
import time
import traceback
from dataclasses import dataclass

from benchmarks.core.config import apply_overrides, load_profile
from benchmarks.core.errors import UserError, did_you_mean, unknown_name
from benchmarks.core.pipeline import publish
from benchmarks.core.registry import get_study
from benchmarks.core.runstore import RunStore
from benchmarks.core.study import Run, RunContext, global_rank
from benchmarks.core.wandb_logger import sync_hint


@dataclass
class Launch:
    """How to run: where results go and which devices to use."""

    results: str | None = None
    devices: int | str = 1
    num_nodes: int = 1
    accelerator: str = "cpu"
    strategy: str = "auto"
    stage: str | None = None
    keys: tuple[str, ...] = ()


def resolve_config(study: str, profile: str, overrides: list[str], data_root: str | None = None) -> dict:
    cfg = load_profile(study, profile)
    cfg = apply_overrides(cfg, overrides)
    cfg["profile"] = profile
    if data_root:
        cfg["data_root"] = data_root
    return cfg


def select_runs(runs: list[Run], launch: Launch, study: str = "") -> list[Run]:
    """The runs of the plan that --stage / --keys select; selecting nothing is an input error, not exit 0."""
    if not runs:
        raise UserError(f"the {study or 'study'} config plans no runs (an empty grid: seeds or variants are empty)",
                        "give at least one seed and one variant (--print-config shows the resolved config)")
    if launch.stage:
        stages = list(dict.fromkeys(r.stage for r in runs))
        if launch.stage not in stages:
            raise unknown_name("stage", launch.stage, stages)
        runs = [r for r in runs if r.stage == launch.stage]
    if launch.keys:
        known = {r.key for r in runs}
        unknown = [k for k in launch.keys if k not in known]
        if unknown:
            raise UserError(f"run key(s) not in this plan: {', '.join(unknown)}.{did_you_mean(unknown[0], known)}",
                            "pass keys that `python -m benchmarks status <study>` lists for the same profile and --set")
        runs = [r for r in runs if r.key in launch.keys]
    return runs


def say(message: str) -> None:
    if global_rank() == 0:
        print(message, file=sys.stderr, flush=True)


def _eta(durations: dict[str, list[float]], remaining: list[Run]) -> str:
    """Time left: each remaining run costs the mean of its stage's finished runs (else of all finished runs)."""
    done = [d for stage in durations.values() for d in stage]
    if not done or not remaining:
        return ""
    overall = sum(done) / len(done)
    seconds = sum(sum(durations[r.stage]) / len(durations[r.stage]) if durations.get(r.stage) else overall
                  for r in remaining)
    return f" · ETA {int(seconds // 60)}m{int(seconds % 60):02d}s"


def execute_run(study, run: Run, store: RunStore, launch: Launch) -> dict:
    """Execute one run with status bookkeeping; return its metrics."""
    writer = global_rank() == 0
    if writer:
        store.write_run_config(run.key, run.record())
        store.set_status(run.key, "running")
    ctx = RunContext(run=run, store=store, devices=launch.devices, num_nodes=launch.num_nodes,
                     accelerator=launch.accelerator, strategy=launch.strategy)
    start = time.time()
    try:
        metrics = study.execute(run, ctx)
    except (KeyboardInterrupt, SystemExit):
        # Lightning turns Ctrl-C into sys.exit(1) after a graceful shutdown and ignores SIGINT from then on.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if writer:
            store.set_status(run.key, "interrupted")
        raise KeyboardInterrupt from None
    except Exception as err:
        if writer:
            store.set_status(run.key, "failed", error=f"{type(err).__name__}: {err}",
                             traceback=traceback.format_exc())
        raise
    finally:
        ctx.close()
    if writer:
        store.finish(run.key, metrics, wall_seconds=time.time() - start)
    wait_for_all_ranks()
    return metrics


def wait_for_all_ranks() -> None:
    """Under multi-process DDP every rank runs the whole plan: no rank may start a run that needs this one
    before rank 0 has recorded it as finished."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def run_benchmark(study_name: str, cfg: dict, launch: Launch) -> int:
    """Run every unfinished run of the plan, then write the report. Returns a process exit code."""
    study = get_study(study_name)
    store = RunStore(study_name, launch.results)
    plan = study.plan(cfg)
    runs = select_runs(plan, launch, study_name)
    todo = [r for r in runs if not store.is_finished(r.key)]
    stages = list(dict.fromkeys(r.stage for r in plan))
    say(f"{study_name} · profile {cfg.get('profile')} · {len(runs)} runs in {len(stages)} stages · "
        f"{len(runs) - len(todo)} already finished · results in {store.root}")
    durations: dict[str, list[float]] = {}
    for index, run in enumerate(todo, 1):
        resumed = " (resuming)" if store.status(run.key) in ("running", "interrupted", "failed") else ""
        params = " ".join(f"{k}={v}" for k, v in run.params.items())
        say(f"stage {stages.index(run.stage) + 1}/{len(stages)} {run.stage} · run {index}/{len(todo)} · "
            f"{params}{resumed}{_eta(durations, todo[index - 1:])}")
        start = time.time()
        try:
            metrics = execute_run(study, run, store, launch)
        except KeyboardInterrupt:
            say(f"interrupted: {run.key} keeps its last checkpoint; run the same command again to resume.")
            return 130
        seconds = time.time() - start
        durations.setdefault(run.stage, []).append(seconds)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))[:160]
        say(f"  done in {seconds:.1f}s · {shown}")
    if global_rank() != 0:
        return 0
    published = publish(study, cfg, store, plan)
    for line in study.summary_lines(published.results, published.findings):
        print(line)
    report = published.report
    print(f"\nreport:  {report}")
    print(f"findings: {published.findings_json}")
    print(f"figures: {report.parent}/figures/")
    print(f"W&B offline runs: {store.root}/*/wandb/  (upload when online: {sync_hint(store.root)})")
    return 0
