"""Faults a real results directory meets, injected on purpose, on the small digits study.

Each test breaks one thing (a crash at a bad moment, a second launch, a corrupt file, a read-only or
full disk) and asserts the message a user sees and that no finished result is lost.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from benchmarks.core import runner
from benchmarks.core.rerun import rerun
from benchmarks.core.runstore import RunStore

TIMING = ("wall_seconds",)


def _launch(tmp_path, **kwargs) -> runner.Launch:
    return runner.Launch(results=str(tmp_path), **kwargs)


def _metrics(store: RunStore, key: str) -> dict:
    return {k: v for k, v in store.metrics(key).items() if k not in TIMING}


def _keys(study, cfg) -> tuple[str, str]:
    pretrain, finetune = study.plan(cfg)[0], study.plan(cfg)[1]
    return pretrain.key, finetune.key


# --- 2. a crash after training, before metrics.json ------------------------------------------

def test_a_crash_after_training_resumes_from_the_final_checkpoint_with_complete_metrics(study, tmp_path):
    cfg = {"epochs": 2, "seeds": [0], "profile": "test"}
    assert runner.run_benchmark("digits", cfg, _launch(tmp_path)) == 0
    store = RunStore("digits", tmp_path)
    key = study.plan(cfg)[0].key
    complete = _metrics(store, key)
    (store.run_dir(key) / "metrics.json").unlink()  # died between the last checkpoint and metrics.json
    store.set_status(key, "running")
    assert runner.run_benchmark("digits", cfg, _launch(tmp_path)) == 0
    assert _metrics(store, key) == complete  # train loss came back from the checkpoint, not lost


def test_rerun_in_place_of_a_finished_run_says_so_and_retrains_only_with_force(study, tmp_path, capsys):
    cfg = {"epochs": 2, "seeds": [0], "profile": "test"}
    runner.run_benchmark("digits", cfg, _launch(tmp_path))
    store = RunStore("digits", tmp_path)
    key = study.plan(cfg)[0].key
    before = _metrics(store, key)
    study.executed.clear()
    assert rerun(store.run_dir(key)) == 0
    assert "is finished" in capsys.readouterr().out and "--force" not in study.executed
    assert study.executed == []
    assert rerun(store.run_dir(key), force=True) == 0
    assert study.executed == [key]
    assert _metrics(store, key) == before  # same seed, retrained from scratch: the same run
    assert (store.run_dir(key) / "metrics.previous.json").exists()
    assert (store.run_dir(key) / "checkpoints.previous" / "last.ckpt").exists()


# --- 3. one writer per run ----------------------------------------------------------------------

def _hold_lock(store: RunStore, key: str, pid: int, host: str | None = None) -> None:
    path = store.run_dir(key) / "lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "time": 0}))


def test_a_second_launch_leaves_a_run_to_the_launch_that_holds_its_lock(study, tmp_path, capsys):
    cfg = {"epochs": 1, "seeds": [0, 1], "profile": "test"}
    store = RunStore("digits", tmp_path)
    busy, waiting = _keys(study, cfg)[0], study.plan(cfg)[2].key  # pretrain seed 0 and the finetune needing it
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        _hold_lock(store, busy, holder.pid)
        assert runner.run_benchmark("digits", cfg, _launch(tmp_path)) == 0
        err = capsys.readouterr().err
        assert f"is being run by pid {holder.pid}" in err and "another launch is running" in err
        assert not store.is_finished(busy) and not store.is_finished(waiting)
        assert sum(store.is_finished(r.key) for r in study.plan(cfg)) == 2  # the other seed's runs finished
    finally:
        holder.kill()
        holder.wait()
    # its holder is gone: the lock is stale, the next launch takes the run over
    assert runner.run_benchmark("digits", cfg, _launch(tmp_path)) == 0
    assert all(store.is_finished(r.key) for r in study.plan(cfg))
    assert not (store.run_dir(busy) / "lock").exists()


def test_a_lock_from_another_host_is_honoured(study, tmp_path):
    cfg = {"epochs": 1, "seeds": [0], "profile": "test"}
    store = RunStore("digits", tmp_path)
    key = _keys(study, cfg)[0]
    _hold_lock(store, key, pid=1, host="another-node")
    assert runner.run_benchmark("digits", cfg, _launch(tmp_path)) == 0
    assert study.executed == [] and not store.is_finished(key)


def test_a_dead_runs_status_shows_interrupted_and_the_run_resumes(study, tmp_path):
    cfg = {"epochs": 2, "seeds": [0], "profile": "test"}
    store = RunStore("digits", tmp_path)
    key = _keys(study, cfg)[0]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.set_status(key, "running")
    status = json.loads((store.run_dir(key) / "status.json").read_text())
    (store.run_dir(key) / "status.json").write_text(json.dumps({**status, "pid": dead.pid}))
    _hold_lock(store, key, dead.pid)
    assert store.status(key) == "interrupted"
    assert runner.run_benchmark("digits", cfg, _launch(tmp_path)) == 0
    assert store.is_finished(key)


@pytest.fixture
def no_umask_change():
    mask = os.umask(0o022)
    yield
    os.umask(mask)


def test_result_files_are_readable_by_collaborators(study, tmp_path, no_umask_change):
    cfg = {"epochs": 1, "seeds": [0], "profile": "test"}
    runner.run_benchmark("digits", cfg, _launch(tmp_path))
    run_dir = RunStore("digits", tmp_path).run_dir(_keys(study, cfg)[0])
    for name in ("metrics.json", "status.json", "run.yaml"):
        assert (run_dir / name).stat().st_mode & 0o777 == 0o644, name
