"""SLURM submission: the generated scripts, and (where a SLURM is up) real job arrays and requeue.

The `slurm` tests submit the small digits study (tests/benchmarks/digits_study.py) to the local
single-node SLURM that .ci/run starts (tools/start_slurm.sh); without one they skip with a reason.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from benchmarks.__main__ import main
from benchmarks.core import runner
from benchmarks.core.runstore import RunStore
from benchmarks.core.slurm import SlurmResources, sbatch_script
from benchmarks.core.wandb_reader import find_offline_runs, read_offline_run
from tests.benchmarks.digits_study import REGISTRATION, DigitsStudy

REPO = Path(__file__).resolve().parents[3]
REFERENCE = Path(__file__).parent.parent / "data" / "slurm_multinode.sbatch"


def multinode_script() -> str:
    return sbatch_script("segmentation", "transfer", ["transfer__a=1__0123abcd", "transfer__a=2__4567ef01"],
                         Path("/scratch/results/segmentation/slurm/config.yaml"),
                         Path("/scratch/results"),
                         SlurmResources(nodes=2, gpus_per_node=4, cpus_per_task=8, time="04:00:00",
                                        partition="gpu", mem="64G"),
                         python="/opt/suite/.venv/bin/python", workdir=Path("/opt/suite"))


def test_multinode_script_matches_the_stored_reference():
    assert multinode_script() == REFERENCE.read_text()


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
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({"epochs": 1, "seeds": [0, 1], "profile": "test"}))
    assert main(["slurm", "digits", "--config", str(config), "--results", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("#!/bin/bash") == 2 and "#SBATCH --array=0-1" in out
    assert not (tmp_path / "digits" / "slurm" / "pretrain.sbatch").exists()


def _submit(tmp_path: Path, cfg: dict, extra: list[str]) -> None:
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "TSUITE_EXTRA_STUDIES": REGISTRATION, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "benchmarks", "slurm", "digits", "--config", str(config),
                    "--results", str(tmp_path), "--cpus-per-task", "1", "--time", "00:20:00", *extra],
                   check=True, cwd=REPO, env=env)


def _wait(predicate, timeout: float, what: str, logs: Path) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(2)
    shown = "\n".join(p.read_text()[-3000:] for p in sorted(logs.glob("*.out")))
    pytest.fail(f"timed out waiting for {what}; squeue:\n"
                f"{subprocess.run(['squeue'], capture_output=True, text=True).stdout}\nlogs:\n{shown}")


def _requeued_and_held(job: str) -> bool:
    info = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    return "Restarts=1" in info and "JobState=PENDING" in info


@pytest.mark.slurm
def test_job_arrays_with_stage_dependency_finish_every_run(tmp_path):
    cfg = {"epochs": 2, "seeds": [0, 1], "profile": "test"}
    _submit(tmp_path, cfg, [])
    store = RunStore("digits", tmp_path)
    keys = [r.key for r in DigitsStudy().plan(cfg)]
    _wait(lambda: all(store.is_finished(k) for k in keys), 900, "all 4 runs", store.root / "slurm" / "logs")
    pre = [store.metrics(k) for k in keys[:2]]
    assert all(m["epochs"] == 2 for m in pre)
    assert len(list((store.root / "slurm" / "logs").glob("*.out"))) == 4


@pytest.mark.slurm
def test_requeued_job_resumes_with_the_same_result_and_wandb_run(tmp_path, monkeypatch):
    cfg = {"epochs": 6, "seeds": [0], "profile": "test", "epoch_delay": 4.0}
    _submit(tmp_path / "slurm", cfg, ["--stage", "pretrain"])
    store = RunStore("digits", tmp_path / "slurm")
    key = DigitsStudy().plan(cfg)[0].key
    logs = store.root / "slurm" / "logs"
    _wait(lambda: store.last_checkpoint(key) is not None, 180, "a first checkpoint", logs)
    job = subprocess.run(["squeue", "-h", "-o", "%i", "-n", "ts-digits-pretrain"], capture_output=True,
                         text=True).stdout.split()[0]
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    _wait(lambda: _requeued_and_held(job), 120, "the job to be requeued", logs)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)  # skip SLURM's ~2 min hold
    _wait(lambda: store.is_finished(key), 420, "the requeued run to finish", logs)
    assert list(store.run_dir(key).glob("hpc_ckpt_*.ckpt")), "Lightning wrote no requeue checkpoint"
    log_text = "\n".join(p.read_text() for p in logs.glob("*.out"))
    assert "restart 1" in log_text
    ids = {read_offline_run(p).run_id for p in find_offline_runs(store.run_dir(key))}
    assert len(ids) == 1
    # the same run, uninterrupted, in this process
    monkeypatch.setenv("TSUITE_EXTRA_STUDIES", REGISTRATION)
    runner.run_benchmark("digits", cfg | {"epoch_delay": 0.0},
                         runner.Launch(results=str(tmp_path / "local"), stage="pretrain"))
    local_key = DigitsStudy().plan(cfg | {"epoch_delay": 0.0})[0].key
    local = RunStore("digits", tmp_path / "local").metrics(local_key)
    resumed = store.metrics(key)
    assert resumed["epochs"] == local["epochs"] == 6
    assert resumed["weight_norm"] == pytest.approx(local["weight_norm"], rel=1e-5)
    assert resumed["train_loss"] == pytest.approx(local["train_loss"], rel=1e-4)
