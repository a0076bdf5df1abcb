"""SLURM submission: the generated scripts, and (where a SLURM is up) real job arrays and requeue.

The `slurm` tests submit the small digits study (tests/benchmarks/digits_study.py) through the README's
make target (`make slurm-digits`: the Makefile adds a slurm-<name> target for every study registered in
TSUITE_EXTRA_STUDIES) to the local single-node SLURM that .ci/run starts (tools/start_slurm.sh); without
one they skip with a reason.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from benchmarks.__main__ import main
from benchmarks.core import runner
from benchmarks.core.runstore import RunStore
from benchmarks.core.slurm import SlurmResources, pack, sbatch_script
from benchmarks.core.wandb_reader import find_offline_runs, read_offline_run
from tests.benchmarks.digits_study import REGISTRATION, DigitsStudy

REPO = Path(__file__).resolve().parents[3]
REFERENCE = Path(__file__).parent.parent / "data" / "slurm_multinode.sbatch"
PACKED_REFERENCE = Path(__file__).parent.parent / "data" / "slurm_packed_cpu.sbatch"


def multinode_script() -> str:
    return sbatch_script("segmentation", "transfer", ["transfer__a=1__0123abcd", "transfer__a=2__4567ef01"],
                         Path("/scratch/results/segmentation/slurm/config.yaml"),
                         Path("/scratch/results"),
                         SlurmResources(nodes=2, gpus_per_node=4, cpus_per_task=8, time="04:00:00",
                                        partition="gpu", mem="64G"),
                         python="/opt/suite/.venv/bin/python", workdir=Path("/opt/suite"))


def test_multinode_script_matches_the_stored_reference():
    assert multinode_script() == REFERENCE.read_text()


def packed_cpu_script() -> str:
    keys = ["target__seed=0__0a1b2c3d", "target__seed=1__1b2c3d4e", "target__seed=2__2c3d4e5f",
            "target__seed=3__3d4e5f60", "target__seed=4__4e5f6071"]
    return sbatch_script("finetune", "target", keys, Path("/scratch/results/finetune/slurm/config.yaml"),
                         Path("/scratch/results"), SlurmResources(cpus_per_task=2, time="00:30:00", partition="cpu"),
                         python="/opt/suite/.venv/bin/python", workdir=Path("/opt/suite"), runs_per_task=2)


def test_packed_cpu_script_matches_the_stored_reference():
    """5 runs, 2 per task: array 0-2, each task's keys comma-joined for `--keys`, the last task with one run."""
    assert packed_cpu_script() == PACKED_REFERENCE.read_text()


@pytest.mark.parametrize(("n_keys", "per_task"), [(1, 1), (5, 1), (5, 2), (6, 3), (7, 10), (300, 16)])
def test_packing_covers_every_key_once_in_plan_order(n_keys, per_task):
    keys = [f"stage__seed={i}__{i:08x}" for i in range(n_keys)]
    tasks = pack(keys, per_task)
    assert [k for task in tasks for k in task] == keys
    assert len(tasks) == math.ceil(n_keys / per_task)
    assert all(1 <= len(task) <= per_task for task in tasks)


def test_nodes_tasks_and_devices_agree():
    script = multinode_script()
    directive = dict(re.findall(r"#SBATCH --([\w-]+)=(\S+)", script))
    srun = script.splitlines()[-1]
    assert directive["nodes"] == "2" and "--num-nodes 2" in srun
    assert directive["ntasks-per-node"] == directive["gpus-per-node"] == "4" and "--devices 4" in srun
    assert "--strategy ddp" in srun and "--accelerator gpu" in srun
    assert directive["array"] == "0-1" and directive["signal"] == "USR1@90" and "--requeue" in script


def test_bad_time_is_a_clear_error():
    with pytest.raises(Exception, match="TIME=04:00:00"):
        sbatch_script("s", "t", ["k"], Path("c"), Path("l"), SlurmResources(time="four hours"))


@pytest.mark.parametrize("per_task", ["0", "-3"])
def test_runs_per_task_below_one_is_an_input_error_before_anything_is_written(per_task, tmp_path, monkeypatch,
                                                                               capsys):
    monkeypatch.setenv("TSUITE_EXTRA_STUDIES", REGISTRATION)
    config = _config(tmp_path, {"epochs": 1, "seeds": [0], "profile": "test"})
    code = main(["slurm", "digits", "--config", str(config), "--results", str(tmp_path),
                 "--runs-per-task", per_task])
    err = capsys.readouterr().err
    assert code == 2
    assert f"--runs-per-task {per_task}" in err and "RUNS_PER_TASK=2" in err
    assert not (tmp_path / "digits" / "slurm").exists()


def test_the_readme_make_target_prints_the_sbatch_script_of_every_stage(tmp_path):
    """`make slurm-<study> ... DRY_RUN=1` as the README shows it (a pattern rule on a .PHONY target did nothing)."""
    done = subprocess.run(["make", "-s", "-C", str(REPO), "slurm-segmentation", "PROFILE=paper", "PARTITION=gpu",
                           "NODES=2", "GPUS_PER_NODE=4", "DRY_RUN=1", f"ARGS=--results {tmp_path}"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Nothing to be done" not in done.stdout + done.stderr
    stages = re.findall(r"^# ---- stage (\w+)", done.stdout, flags=re.M)
    assert stages == ["source", "target"]
    assert done.stdout.count("#SBATCH --nodes=2") == 2 and "#SBATCH --partition=gpu" in done.stdout
    assert "--devices 4 --num-nodes 2 --accelerator gpu --strategy ddp" in done.stdout
    assert not list(tmp_path.glob("segmentation/*/metrics.json"))  # nothing ran


def test_dry_run_prints_every_stage_and_submits_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TSUITE_EXTRA_STUDIES", REGISTRATION)
    config = _config(tmp_path, {"epochs": 1, "seeds": [0, 1], "profile": "test"})
    assert main(["slurm", "digits", "--config", str(config), "--results", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("#!/bin/bash") == 2 and "#SBATCH --array=0-1" in out
    assert out.count("2 runs in 2 array tasks (1 per task)") == 2
    assert not (tmp_path / "digits" / "slurm" / "pretrain.sbatch").exists()


def test_make_passes_runs_per_task_and_knows_the_registered_extra_study(tmp_path):
    """`make slurm-digits RUNS_PER_TASK=2 DRY_RUN=1`: 3 runs per stage packed into 2 array tasks of each stage."""
    cfg = {"epochs": 1, "seeds": [0, 1, 2], "profile": "test"}
    out = _make_slurm(tmp_path, cfg, runs_per_task=2, dry_run=True)
    assert re.findall(r"^# ---- stage (\w+): 3 runs in 2 array tasks \(2 per task\)", out, flags=re.M) == \
        ["pretrain", "finetune"]
    assert out.count("#SBATCH --array=0-1") == 2
    pretrain = [r.key for r in DigitsStudy().plan(cfg) if r.stage == "pretrain"]
    assert f"KEYS=({pretrain[0]},{pretrain[1]} {pretrain[2]})" in out
    assert not (tmp_path / "digits" / "slurm" / "pretrain.sbatch").exists()


def _config(directory: Path, cfg: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "cfg.yaml"
    config.write_text(yaml.safe_dump(cfg))
    return config


def _make_slurm(results: Path, cfg: dict, runs_per_task: int = 1, dry_run: bool = False, args: str = "") -> str:
    """Submit (or print) the digits study the README's way, `make slurm-digits ...`; returns make's stdout."""
    config = _config(results, cfg)
    env = {**os.environ, "TSUITE_EXTRA_STUDIES": REGISTRATION, "PYTHONPATH": str(REPO)}
    command = ["make", "-s", "-C", str(REPO), "slurm-digits", "TIME=00:20:00", f"RUNS_PER_TASK={runs_per_task}",
               f"ARGS=--config {config} --results {results} --cpus-per-task 1 {args}"]
    done = subprocess.run(command + (["DRY_RUN=1"] if dry_run else []), capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Nothing to be done" not in done.stdout + done.stderr
    return done.stdout


def _submitted_arrays(make_stdout: str) -> dict[str, str]:
    """stage -> job id, from the lines `<stage>: submitted job array <id>: ...`."""
    return dict(re.findall(r"^(\w+): submitted job array (\d+):", make_stdout, flags=re.M))


def _array_tasks(job: str) -> list[dict[str, str]]:
    """One record per array task of a job array (SLURM keeps finished jobs for MinJobAge, 600 s here)."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True).stdout
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line.strip()]


ACTIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"}


def _settled(jobs: list[str]) -> bool:
    """Every task of every array has ended, or one failed (then a dependent array would wait forever)."""
    states = [t.get("JobState") for job in jobs for t in _array_tasks(job)]
    ended = [s for s in states if s not in ACTIVE_STATES]
    return bool(states) and (len(ended) == len(states) or any(s != "COMPLETED" for s in ended))


def _wait(predicate, timeout: float, what: str, logs: Path) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(2)
    pytest.fail(f"timed out waiting for {what}; squeue:\n"
                f"{subprocess.run(['squeue'], capture_output=True, text=True).stdout}\nlogs:\n{_logs(logs)}")


def _logs(logs: Path) -> str:
    return "\n".join(p.read_text()[-3000:] for p in sorted(logs.glob("*.out")))


def _requeued_and_held(job: str) -> bool:
    info = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    return "Restarts=1" in info and "JobState=PENDING" in info


@pytest.mark.slurm
def test_packed_job_arrays_through_make_finish_every_run_stage_after_stage(tmp_path):
    """RUNS_PER_TASK=2: 3 runs per stage in 2 array tasks each; fine-tuning starts after every pretraining ended."""
    cfg = {"epochs": 2, "seeds": [0, 1, 2], "profile": "test"}
    jobs = _submitted_arrays(_make_slurm(tmp_path, cfg, runs_per_task=2))
    assert list(jobs) == ["pretrain", "finetune"]
    store = RunStore("digits", tmp_path)
    plan = DigitsStudy().plan(cfg)
    logs = store.root / "slurm" / "logs"
    _wait(lambda: _settled(list(jobs.values())), 900, "both job arrays", logs)
    tasks = {stage: _array_tasks(job) for stage, job in jobs.items()}
    states = {stage: sorted((t["ArrayTaskId"], t["JobState"]) for t in records) for stage, records in tasks.items()}
    assert states == {"pretrain": [("0", "COMPLETED"), ("1", "COMPLETED")],
                      "finetune": [("0", "COMPLETED"), ("1", "COMPLETED")]}, _logs(logs)
    assert all(store.is_finished(r.key) for r in plan)
    assert all(store.metrics(r.key)["epochs"] == 2 for r in plan if r.stage == "pretrain")
    # SLURM's view: every fine-tuning task started no earlier than the last pretraining task ended (1 s clock)
    stamp = datetime.fromisoformat
    assert min(stamp(t["StartTime"]) for t in tasks["finetune"]) >= max(stamp(t["EndTime"]) for t in tasks["pretrain"])
    # the run store's view: no fine-tuning run was begun (run.yaml) before every pretraining run had finished
    pretrain_done = max((store.run_dir(r.key) / "metrics.json").stat().st_mtime for r in plan if r.stage == "pretrain")
    assert min((store.run_dir(r.key) / "run.yaml").stat().st_mtime for r in plan if r.stage == "finetune") \
        >= pretrain_done
    # each task ran its own pair (or the last single run) of the plan, in order
    pretrain = [r.key for r in plan if r.stage == "pretrain"]
    first = next(logs.glob(f"ts-digits-pretrain-{jobs['pretrain']}_0.out")).read_text()
    last = next(logs.glob(f"ts-digits-pretrain-{jobs['pretrain']}_1.out")).read_text()
    assert f"task 0 runs {pretrain[0]},{pretrain[1]} (restart 0)" in first
    assert f"task 1 runs {pretrain[2]} (restart 0)" in last
    assert len(list(logs.glob("*.out"))) == 4


@pytest.mark.slurm
@pytest.mark.parametrize("runs_per_task", [1, 2])
def test_requeued_task_skips_its_finished_runs_and_resumes_the_interrupted_one(tmp_path, monkeypatch, runs_per_task):
    """SIGUSR1 during the task's last run: Lightning requeues the task; the restart leaves the runs it already
    finished untouched, resumes the interrupted one (same result as uninterrupted, one W&B run)."""
    cfg = {"epochs": 6, "seeds": list(range(runs_per_task)), "profile": "test", "epoch_delay": 4.0}
    _make_slurm(tmp_path / "slurm", cfg, runs_per_task=runs_per_task, args="--stage pretrain")
    store = RunStore("digits", tmp_path / "slurm")
    *done_first, key = [r.key for r in DigitsStudy().plan(cfg) if r.stage == "pretrain"]
    logs = store.root / "slurm" / "logs"
    _wait(lambda: all(store.is_finished(k) for k in done_first) and store.last_checkpoint(key) is not None, 300,
          "the task's earlier runs to finish and a first checkpoint of its last run", logs)
    stamps = {k: [(store.run_dir(k) / f).stat().st_mtime_ns for f in ("run.yaml", "metrics.json")]
              for k in done_first}
    job = subprocess.run(["squeue", "-h", "-o", "%i", "-n", "ts-digits-pretrain"], capture_output=True,
                         text=True).stdout.split()[0]
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    _wait(lambda: _requeued_and_held(job), 120, "the job to be requeued", logs)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)  # skip SLURM's ~2 min hold
    _wait(lambda: store.is_finished(key), 420, "the requeued run to finish", logs)
    assert list(store.run_dir(key).glob("hpc_ckpt_*.ckpt")), "Lightning wrote no requeue checkpoint"
    log_text = "\n".join(p.read_text() for p in logs.glob("*.out"))
    assert "restart 1" in log_text
    # the runs finished before the requeue were skipped, not run again (run.yaml is rewritten when a run starts)
    assert {k: [(store.run_dir(k) / f).stat().st_mtime_ns for f in ("run.yaml", "metrics.json")]
            for k in done_first} == stamps
    ids = {read_offline_run(p).run_id for p in find_offline_runs(store.run_dir(key))}
    assert len(ids) == 1
    # the same run, uninterrupted, in this process
    monkeypatch.setenv("TSUITE_EXTRA_STUDIES", REGISTRATION)
    local_cfg = cfg | {"epoch_delay": 0.0}
    local_key = DigitsStudy().plan(local_cfg)[runs_per_task - 1].key
    runner.run_benchmark("digits", local_cfg,
                         runner.Launch(results=str(tmp_path / "local"), stage="pretrain", keys=(local_key,)))
    local = RunStore("digits", tmp_path / "local").metrics(local_key)
    resumed = store.metrics(key)
    assert resumed["epochs"] == local["epochs"] == 6
    assert resumed["weight_norm"] == pytest.approx(local["weight_norm"], rel=1e-5)
    assert resumed["train_loss"] == pytest.approx(local["train_loss"], rel=1e-4)
