"""Concurrent runs (``--jobs``): how many workers, which run may start, and the grid on a real study.

The end-to-end tests run the small digits study (tests/benchmarks/digits_study.py) from the command
line as a user does, in worker processes, and compare it with one run at a time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from benchmarks.core.errors import UserError
from benchmarks.core.grid import GridOutcome, Workers, _block_unreachable, _next_ready, parse_jobs, plan_workers
from benchmarks.core.runner import Launch, choose_workers
from benchmarks.core.runstore import RunStore
from benchmarks.core.study import Run
from tests.benchmarks.digits_study import REGISTRATION, DigitsStudy

REPO = Path(__file__).resolve().parents[3]
TIMING = ("wall_seconds", "train_seconds")  # the only metrics that measure the clock, not the run
GIB = 1024**3


# --- how many workers -------------------------------------------------------------------------

def test_auto_on_a_cpu_gives_each_core_a_run_with_one_thread():
    assert plan_workers("auto", "cpu", runs=64, cores=2, memory=24 * GIB) == Workers(2, 1, (None, None))


def test_auto_on_a_cpu_leaves_a_study_the_threads_that_pay_off_for_its_model():
    assert plan_workers("auto", "cpu", runs=64, run_threads=4, cores=16, memory=64 * GIB).count == 4
    assert plan_workers("auto", "cpu", runs=64, run_threads=4, cores=16, memory=64 * GIB).threads == 4


def test_auto_stays_within_the_memory_available():
    assert plan_workers("auto", "cpu", runs=64, cores=16, run_memory_gib=2.0, memory=5 * GIB).count == 2


def test_never_more_workers_than_runs_and_the_cores_are_shared():
    assert plan_workers(8, "cpu", runs=3, cores=12, memory=64 * GIB) == Workers(3, 4, (None,) * 3)


def test_auto_on_gpus_places_runs_per_gpu_round_robin():
    workers = plan_workers("auto", "gpu", runs=100, runs_per_gpu=2, gpus=2, cores=16)
    assert workers.count == 4 and workers.gpus == (0, 1, 0, 1) and workers.threads == 4


def test_jobs_must_be_a_positive_number_or_auto():
    assert parse_jobs("auto") == "auto" and parse_jobs("3") == 3
    for bad in ("0", "-1", "two", "2.5"):
        with pytest.raises(UserError, match="--jobs"):
            parse_jobs(bad)


def test_concurrent_runs_cannot_be_combined_with_ddp():
    with pytest.raises(UserError, match="--jobs 2 cannot be combined with a distributed run"):
        choose_workers(DigitsStudy(), Launch(devices=2, strategy="ddp", jobs=2), runs=4)
    assert choose_workers(DigitsStudy(), Launch(devices=2, strategy="ddp", jobs="auto"), runs=4).count == 1


# --- which run may start ----------------------------------------------------------------------

class FinishedKeys:
    """A stand-in for the run store that knows only which runs are finished."""

    def __init__(self, *keys: str) -> None:
        self.keys = set(keys)

    def is_finished(self, key: str) -> bool:
        return key in self.keys


def _runs():
    source = Run("s", "source", {"seed": 0}, {})
    target = Run("s", "target", {"seed": 0}, {}, needs=(source.key,))
    other = Run("s", "source", {"seed": 1}, {})
    return source, target, other


def test_a_run_starts_only_when_every_run_it_needs_is_finished():
    source, target, other = _runs()
    assert _next_ready([target, other], FinishedKeys()) is other
    assert _next_ready([target], FinishedKeys(source.key)) is target


def test_a_run_whose_need_failed_is_not_run_and_says_why():
    source, target, _ = _runs()
    outcome = GridOutcome([], {source.key: "RuntimeError"}, {}, False)
    pending = [target]
    _block_unreachable(pending, {}, FinishedKeys(), outcome)
    assert pending == [] and "which failed" in outcome.blocked[target.key]


def test_a_run_whose_need_is_neither_finished_nor_selected_is_not_run():
    source, target, _ = _runs()
    outcome = GridOutcome([], {}, {}, False)
    pending = [target]
    _block_unreachable(pending, {}, FinishedKeys(), outcome)
    assert "not finished and not selected" in outcome.blocked[target.key]
    scheduled = [target]
    _block_unreachable(scheduled, {0: (source, 0.0)}, FinishedKeys(), outcome)  # its need is running: it waits
    assert scheduled == [target]


# --- the grid on a real study, from the command line -----------------------------------------

def _config(tmp_path: Path, **values) -> Path:
    path = tmp_path / "digits.yaml"
    path.write_text(yaml.safe_dump({"epochs": 2, "seeds": [0, 1, 2], "profile": "test", **values}))
    return path


def _benchmark(config: Path, results: Path, *args: str, threads: int | None = None, **popen):
    env = {**os.environ, "TSUITE_EXTRA_STUDIES": REGISTRATION, "TSUITE_ACCELERATOR": "cpu"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    command = [sys.executable, "-m", "benchmarks", "digits", "--config", str(config), "--results", str(results),
               *args]
    if popen:
        return subprocess.Popen(command, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, **popen)
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _metrics(results: Path) -> dict[str, dict]:
    store = RunStore("digits", results)
    return {d.name: {k: v for k, v in store.metrics(d.name).items() if k not in TIMING}
            for d in store.root.iterdir() if (d / "metrics.json").exists()}


def test_concurrent_runs_equal_one_run_at_a_time_with_the_same_threads(tmp_path):
    config = _config(tmp_path)
    alone = _benchmark(config, tmp_path / "one", "--jobs", "1", threads=1)
    together = _benchmark(config, tmp_path / "two", "--jobs", "2")
    assert alone.returncode == 0 and together.returncode == 0, together.stdout + together.stderr
    assert "2 workers × 1 threads on CPU" in together.stderr
    assert len(_metrics(tmp_path / "one")) == 6
    assert _metrics(tmp_path / "one") == _metrics(tmp_path / "two")
    one, two = (json.loads((tmp_path / d / "digits" / "findings.json").read_text()) for d in ("one", "two"))
    assert one == two
    for run_dir in (tmp_path / "two" / "digits").glob("*__*"):
        assert (run_dir / "run.log").read_text().strip(), f"{run_dir.name} kept no log"
        assert yaml.safe_load((run_dir / "run.yaml").read_text())["launch"]["threads"] == 1


def test_a_failing_run_does_not_stop_the_others_and_its_dependants_say_why(tmp_path):
    done = _benchmark(_config(tmp_path, fail_seed=1), tmp_path, "--jobs", "2")
    assert done.returncode == 1
    store = RunStore("digits", tmp_path)
    statuses = {d.name.split("__")[0] + d.name.split("__")[1]: store.status(d.name) for d in store.root.glob("*__*")}
    assert statuses == {"pretrainseed=0": "finished", "pretrainseed=1": "failed", "pretrainseed=2": "finished",
                        "finetuneseed=0": "finished", "finetuneseed=2": "finished"}
    assert "fails on purpose" in done.stderr and "which failed" in done.stderr
    failed = next(store.root.glob("pretrain__seed=1__*"))
    assert "RuntimeError: seed 1 fails on purpose" in (failed / "run.log").read_text()  # the traceback is kept
    assert str(failed / "run.log") in done.stderr


def test_ctrl_c_stops_every_worker_and_the_same_command_resumes(tmp_path):
    config = _config(tmp_path, epochs=20, epoch_delay=0.4)  # >= 8 s a run: both still train at the Ctrl-C
    store = RunStore("digits", tmp_path)
    grid = _benchmark(config, tmp_path, "--jobs", "2", start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and sum(store.status(d.name) == "running" for d in store.root.glob("*__*")) < 2:
        time.sleep(0.2)
    time.sleep(1.5)  # both runs are past their first epoch: each has a checkpoint
    os.killpg(grid.pid, signal.SIGINT)  # Ctrl-C at a terminal reaches the whole process group
    output, _ = grid.communicate(timeout=180)
    assert grid.returncode == 130, output
    statuses = [store.status(d.name) for d in store.root.glob("*__*")]
    assert "running" not in statuses and statuses.count("interrupted") >= 1, statuses
    assert set(statuses) <= {"interrupted", "finished"}, statuses  # every run finished or resumable
    assert "run the same command again to resume" in output
    again = _benchmark(config, tmp_path, "--jobs", "2")
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("(resuming)") == statuses.count("interrupted")
    assert all(store.is_finished(d.name) for d in store.root.glob("*__*")) and len(list(store.root.glob("*__*"))) == 6
