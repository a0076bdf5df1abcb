"""Run a whole benchmark: plan, skip what is finished, resume what was interrupted, report.

Safe under DDP/SLURM multi-process launches: every rank plans the same runs and trains them
together; only global rank 0 writes the run store. Ctrl-C marks the current run interrupted and
keeps its last checkpoint; running the same command again resumes it.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, replace

from benchmarks.core.config import apply_overrides, load_profile
from benchmarks.core.devices import describe
from benchmarks.core.errors import UserError, did_you_mean, unknown_name
from benchmarks.core.grid import Workers, eta, plan_workers, run_grid
from benchmarks.core.pipeline import publish
from benchmarks.core.registry import get_study
from benchmarks.core.runstore import RunBusy, RunStore
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
    jobs: int | str = 1
    runs_per_gpu: int = 1
    profile: str = ""

    @property
    def distributed(self) -> bool:
        """One run spans several processes (DDP, multi-node, or launched by srun/torchrun as one of many ranks)."""
        ranks = max(int(os.environ.get(v, "1") or 1) for v in ("WORLD_SIZE", "SLURM_NTASKS"))
        return (self.devices not in (1, "1") or self.num_nodes > 1 or "ddp" in str(self.strategy) or ranks > 1)


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


def execute_run(study, run: Run, store: RunStore, launch: Launch) -> dict:
    """Execute one run with status bookkeeping, holding its lock; return its metrics. Raises RunBusy when
    another launch is running it. Under DDP the ranks of one launch train it together, unlocked (a SLURM
    array task is the only launch of its runs)."""
    if launch.distributed:
        return _execute_unlocked(study, run, store, launch)
    with store.locked(run.key):
        if store.is_finished(run.key):  # another launch finished it while this one waited for its turn
            return store.metrics(run.key)
        return _execute_unlocked(study, run, store, launch)


def _execute_unlocked(study, run: Run, store: RunStore, launch: Launch) -> dict:
    writer = global_rank() == 0
    if writer:
        store.write_run_config(run.key, {**run.record(), "launch": launch_record(launch)})
        store.set_status(run.key, "running")
    ctx = RunContext(run=run, store=store, devices=launch.devices, num_nodes=launch.num_nodes,
                     accelerator=launch.accelerator, strategy=launch.strategy, profile=launch.profile)
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


def launch_record(launch: Launch) -> dict:
    """How a run was executed, for its run.yaml: the resolved accelerator, devices and intra-op threads."""
    import torch

    return {"accelerator": launch.accelerator, "devices": launch.devices, "num_nodes": launch.num_nodes,
            "strategy": launch.strategy, "threads": torch.get_num_threads()}


def choose_workers(study, launch: Launch, runs: int) -> Workers:
    """The grid's workers for ``runs`` pending runs; one in-process worker for distributed runs."""
    from benchmarks.core.devices import gpu_count

    if launch.distributed:
        if launch.jobs not in (1, "auto"):
            raise UserError(f"--jobs {launch.jobs} cannot be combined with a distributed run "
                            f"(devices={launch.devices}, num_nodes={launch.num_nodes}, strategy={launch.strategy})",
                            "use --jobs 1 with DDP, or --devices 1 and --jobs N for concurrent single-device runs")
        return Workers(1, 0, (None,))
    return plan_workers(launch.jobs, launch.accelerator, runs, run_threads=study.run_threads,
                        run_memory_gib=study.run_memory_gib, runs_per_gpu=launch.runs_per_gpu,
                        gpus=gpu_count() if launch.accelerator == "gpu" else 0)


def run_benchmark(study_name: str, cfg: dict, launch: Launch) -> int:
    """Run every unfinished run of the plan, then write the report. Returns a process exit code."""
    study = get_study(study_name)
    store = RunStore(study_name, launch.results)
    launch = replace(launch, profile=str(cfg.get("profile", "")))
    plan = study.plan(cfg)
    runs = select_runs(plan, launch, study_name)
    todo = [r for r in runs if not store.is_finished(r.key)]
    stages = list(dict.fromkeys(r.stage for r in plan))
    workers = choose_workers(study, launch, len(todo))
    how = workers.describe() if workers.count > 1 else f"one run at a time on {describe(launch.accelerator)}"
    say(f"{study_name} · profile {cfg.get('profile')} · {len(runs)} runs in {len(stages)} stages · "
        f"{len(runs) - len(todo)} already finished · {how} · results in {store.root}")
    if workers.count > 1:
        code = _run_concurrently(study_name, cfg, launch, todo, store, workers)
    else:
        code = _run_one_at_a_time(study, launch, todo, stages, store)
    if code is not None:
        return code
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


def _run_one_at_a_time(study, launch: Launch, todo: list[Run], stages: list[str], store: RunStore) -> int | None:
    """Sequential execution in this process (DDP ranks run it together). None when every run finished."""
    durations: dict[str, list[float]] = {}
    busy: list[str] = []
    for index, run in enumerate(todo, 1):
        missing = [key for key in run.needs if not store.is_finished(key)]
        if missing:
            if any(key in busy for key in missing):
                say(f"not run: {run.key} needs {missing[0]}, which another launch is running")
                busy.append(run.key)
                continue
            raise UserError(f"run {run.key} needs {missing[0]}, which is not finished and not selected",
                            "run its stage first (drop --stage/--keys, or select the stage it needs)")
        resumed = " (resuming)" if store.status(run.key) in ("running", "interrupted", "failed") else ""
        params = " ".join(f"{k}={v}" for k, v in run.params.items())
        say(f"stage {stages.index(run.stage) + 1}/{len(stages)} {run.stage} · run {index}/{len(todo)} · "
            f"{params}{resumed}{eta(durations, todo[index - 1:])}")
        start = time.time()
        try:
            metrics = execute_run(study, run, store, launch)
        except KeyboardInterrupt:
            say(f"interrupted: {run.key} keeps its last checkpoint; run the same command again to resume.")
            return 130
        except RunBusy as err:
            say(f"  skipped: {err} (another launch; `status` shows it)")
            busy.append(run.key)
            continue
        seconds = time.time() - start
        durations.setdefault(run.stage, []).append(seconds)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))[:160]
        say(f"  done in {seconds:.1f}s · {shown}")
    if busy:
        say(f"{len(busy)} runs were left to the other launch that is running them; the report covers what has "
            "finished; run the same command when that launch is done to complete it.")
    return None


def _run_concurrently(study_name: str, cfg: dict, launch: Launch, todo: list[Run], store: RunStore,
                      workers: Workers) -> int | None:
    """The grid runner (benchmarks/core/grid.py). None when every run finished, else the exit code."""
    outcome = run_grid(study_name, cfg, launch, todo, store, workers, say=say)
    if outcome.interrupted:
        say("interrupted: finished runs are kept, interrupted ones keep their last checkpoint; "
            "run the same command again to resume.")
        return 130
    if outcome.failed or outcome.blocked:
        for key, why in outcome.failed.items():
            say(f"failed:  {key}: {why}\n         log: {store.run_dir(key) / 'run.log'}")
        for key, why in outcome.blocked.items():
            say(f"not run: {key}: {why}")
        say(f"{len(outcome.finished)} runs finished, {len(outcome.failed)} failed, {len(outcome.blocked)} not run; "
            f"fix the cause and run the same command again (finished runs are kept; "
            f"`make report STUDY={study_name}` writes a report from the finished ones).")
        return 1
    if outcome.busy:
        for key, why in outcome.busy.items():
            say(f"left to another launch: {key}: {why}")
        say(f"{len(outcome.busy)} runs were left to the other launch that is running them; the report covers what "
            "has finished; run the same command when that launch is done to complete it.")
    return None
