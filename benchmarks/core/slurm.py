"""Submit a benchmark to SLURM: one job array per stage, stage dependencies, preemption-safe.

Each array task runs ``runs_per_task`` runs of the plan (default 1) one after another, in one
``srun`` with as many tasks per node as the Trainer has devices (Lightning DDP picks up the SLURM
environment): packing turns a grid of hundreds of tiny runs into ceil(runs / N) array tasks, and the
task's time limit then has to cover N runs. Requeue: SLURM sends SIGUSR1 90 s before the time limit
(``--signal=USR1@90``); Lightning's SLURM environment handles it once: it writes ``hpc_ckpt_<n>.ckpt``
into the run directory and calls ``scontrol requeue``. The requeued task runs the same keys again: the
runner skips those already finished, resumes the interrupted one from that checkpoint
(RunContext.resume_path) with the same W&B run (id from the run key, resume="allow"), then runs the
rest. Finished runs are never resubmitted.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks.core.config import dump
from benchmarks.core.errors import UserError
from benchmarks.core.registry import get_study
from benchmarks.core.runner import select_runs
from benchmarks.core.runstore import RunStore, atomic_write_text
from benchmarks.core.study import Run


@dataclass(frozen=True)
class SlurmResources:
    """What each array task asks for. ``gpus_per_node=0`` means CPU processes (one per task)."""

    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 2
    time: str = "04:00:00"
    partition: str | None = None
    mem: str | None = None
    tasks_per_node: int = 1

    @property
    def devices(self) -> int:
        return self.gpus_per_node if self.gpus_per_node > 0 else self.tasks_per_node


def _validate_time(value: str) -> str:
    if not re.fullmatch(r"(\d+-)?\d{1,2}(:\d{2}){0,2}", value):
        raise UserError(f'SLURM time "{value}" is not a SLURM duration', 'use e.g. TIME=04:00:00 or 1-00:00:00')
    return value


def _validate_runs_per_task(value: int) -> int:
    if value < 1:
        raise UserError(f"--runs-per-task {value}: an array task has to run at least one run",
                        "give 1 (one run per array task, the default) or more to pack small runs: "
                        "--runs-per-task 2, or RUNS_PER_TASK=2 with make")
    return value


def pack(keys: list[str], runs_per_task: int = 1) -> list[list[str]]:
    """The run keys of each array task: consecutive groups of ``runs_per_task`` keys, in plan order."""
    _validate_runs_per_task(runs_per_task)
    return [keys[i:i + runs_per_task] for i in range(0, len(keys), runs_per_task)]


def sbatch_script(study: str, stage: str, keys: list[str], config_file: Path, results_dir: Path,
                  resources: SlurmResources, python: str = sys.executable, workdir: Path | None = None,
                  runs_per_task: int = 1) -> str:
    """The sbatch script of one stage: a job array whose task i runs the i-th group of ``runs_per_task`` keys
    (``--keys k1,k2,...``: one after another in one process, finished ones skipped on a requeue)."""
    _validate_time(resources.time)
    tasks = pack(keys, runs_per_task)
    log_dir = results_dir / study / "slurm" / "logs"
    accelerator = "gpu" if resources.gpus_per_node > 0 else "cpu"
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name=ts-{study}-{stage}",
        f"#SBATCH --array=0-{len(tasks) - 1}",
        f"#SBATCH --nodes={resources.nodes}",
        f"#SBATCH --ntasks-per-node={resources.devices}",
        f"#SBATCH --cpus-per-task={resources.cpus_per_task}",
        f"#SBATCH --time={resources.time}",
        f"#SBATCH --output={log_dir}/%x-%A_%a.out",
        "#SBATCH --open-mode=append",
        "#SBATCH --requeue",
        "#SBATCH --signal=USR1@90",
    ]
    if resources.gpus_per_node > 0:
        lines.append(f"#SBATCH --gpus-per-node={resources.gpus_per_node}")
    if resources.partition:
        lines.append(f"#SBATCH --partition={resources.partition}")
    if resources.mem:
        lines.append(f"#SBATCH --mem={resources.mem}")
    command = [python, "-m", "benchmarks", "run", study, "--config", str(config_file), "--results", str(results_dir),
               "--keys", '"${KEYS[$SLURM_ARRAY_TASK_ID]}"', "--devices", str(resources.devices),
               "--num-nodes", str(resources.nodes), "--accelerator", accelerator,
               "--strategy", "ddp" if resources.devices * resources.nodes > 1 else "auto",
               "--jobs", "1"]  # a task's runs one after another, whatever TSUITE_JOBS sbatch copies from the shell
    lines += [
        "",
        "set -euo pipefail",
        f"cd {shlex.quote(str(workdir or Path.cwd()))}",
        "export WANDB_MODE=${WANDB_MODE:-offline}",
        "KEYS=(" + " ".join(shlex.quote(",".join(task)) for task in tasks) + ")",
        f'echo "task $SLURM_ARRAY_TASK_ID {"runs" if runs_per_task > 1 else "run"} ${{KEYS[$SLURM_ARRAY_TASK_ID]}} '
        '(restart ${SLURM_RESTART_COUNT:-0})"',
        "srun " + " ".join(c if c.startswith('"') else shlex.quote(c) for c in command),
        "",
    ]
    return "\n".join(lines)


def stage_groups(runs: list[Run]) -> list[tuple[str, list[Run]]]:
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.stage, []).append(run)
    return list(groups.items())


def submit_benchmark(args, cfg: dict, launch) -> int:
    """Write one sbatch script per stage with unfinished runs, submit them chained by afterok."""
    resources = SlurmResources(nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                               cpus_per_task=args.cpus_per_task, time=_validate_time(args.time),
                               partition=args.partition or None, mem=args.mem)
    per_task = _validate_runs_per_task(args.runs_per_task)
    store = RunStore(args.study, launch.results)
    plan = select_runs(get_study(args.study).plan(cfg), launch)
    slurm_dir = store.root / "slurm"
    config_file = slurm_dir / "config.yaml"
    if not args.dry_run:
        atomic_write_text(config_file, dump(cfg))
    previous: str | None = None
    for stage, runs in stage_groups(plan):
        keys = [r.key for r in runs if not store.is_finished(r.key)]
        if not keys:
            print(f"{stage}: all {len(runs)} runs finished, nothing to submit")
            continue
        script = sbatch_script(args.study, stage, keys, config_file, store.root.parent, resources,
                               workdir=Path.cwd(), runs_per_task=per_task)
        n_tasks = len(pack(keys, per_task))
        packing = f"{len(keys)} runs in {n_tasks} array task{'s' if n_tasks > 1 else ''} ({per_task} per task)"
        if args.dry_run:
            print(f"# ---- stage {stage}: {packing}" +
                  (f", after stage job {previous or '<previous>'}" if previous or stage != plan[0].stage else ""))
            print(script)
            previous = previous or "<previous>"
            continue
        if shutil.which("sbatch") is None:
            raise UserError("sbatch is not on PATH (no SLURM client here)",
                            "run on a SLURM login node, or use DRY_RUN=1 to print the scripts")
        path = slurm_dir / f"{stage}.sbatch"
        atomic_write_text(path, script)
        (slurm_dir / "logs").mkdir(parents=True, exist_ok=True)
        cmd = ["sbatch", "--parsable"] + ([f"--dependency=afterok:{previous}"] if previous else []) + [str(path)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise UserError(f"sbatch refused {path}: {result.stderr.strip()}",
                            "check PARTITION/TIME/GPUS_PER_NODE against `sinfo`, or print with DRY_RUN=1")
        previous = result.stdout.strip().split(";")[0]
        print(f"{stage}: submitted job array {previous}: {packing} · logs in {slurm_dir / 'logs'}")
    print(f"status: python -m benchmarks status {args.study} --profile {cfg.get('profile')}")
    return 0
