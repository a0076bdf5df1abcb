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
from pathlib import Path

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


# --- 1. exact resume -------------------------------------------------------------------------------

def test_a_run_interrupted_at_a_checkpoint_resumes_to_the_uninterrupted_runs_metrics(study, tmp_path):
    cfg = {"epochs": 4, "seeds": [0], "profile": "test", "dropout": 0.3}  # dropout draws random numbers
    key = _keys(study, cfg)[0]
    assert runner.run_benchmark("digits", cfg, _launch(tmp_path / "whole")) == 0
    study.interrupt_at = 1
    assert runner.run_benchmark("digits", cfg, _launch(tmp_path / "resumed")) == 130
    study.interrupt_at = None
    assert runner.run_benchmark("digits", cfg, _launch(tmp_path / "resumed")) == 0
    assert _metrics(RunStore("digits", tmp_path / "resumed"), key) == _metrics(RunStore("digits", tmp_path / "whole"),
                                                                               key)


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


# --- 4. corrupt or truncated files --------------------------------------------------------------

def test_a_truncated_checkpoint_is_set_aside_and_the_run_restarts_from_scratch(study, tmp_path, capsys):
    cfg = {"epochs": 3, "seeds": [0], "profile": "test"}
    key = _keys(study, cfg)[0]
    runner.run_benchmark("digits", cfg, _launch(tmp_path / "clean"))
    clean = _metrics(RunStore("digits", tmp_path / "clean"), key)
    study.interrupt_at = 1
    assert runner.run_benchmark("digits", cfg, _launch(tmp_path / "broken")) == 130
    store = RunStore("digits", tmp_path / "broken")
    checkpoint = store.last_checkpoint(key)
    checkpoint.write_bytes(checkpoint.read_bytes()[:2000])
    study.interrupt_at = None
    assert runner.run_benchmark("digits", cfg, _launch(tmp_path / "broken")) == 0
    err = capsys.readouterr().err
    assert f"checkpoint {checkpoint} cannot be loaded" in err and "restarting this run from scratch" in err
    assert checkpoint.with_name("last.ckpt.corrupt").exists()
    assert _metrics(store, key) == clean


class _Payload:
    """Pickled into a checkpoint: unpickling it would create ``marker`` (code execution)."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_holding_code_is_never_executed(study, tmp_path, capsys):
    import torch

    cfg = {"epochs": 2, "seeds": [0], "profile": "test"}
    store = RunStore("digits", tmp_path)
    key = _keys(study, cfg)[0]
    marker = tmp_path / "code-ran"
    store.checkpoint_dir(key).mkdir(parents=True)
    torch.save({"state_dict": {}, "payload": _Payload(marker)}, store.checkpoint_dir(key) / "last.ckpt")
    assert runner.run_benchmark("digits", cfg, _launch(tmp_path)) == 0
    assert not marker.exists() and store.is_finished(key)
    assert "cannot be loaded" in capsys.readouterr().err


def test_a_corrupt_metrics_json_is_set_aside_and_written_again_from_the_final_checkpoint(study, tmp_path, capsys):
    cfg = {"epochs": 2, "seeds": [0], "profile": "test"}
    runner.run_benchmark("digits", cfg, _launch(tmp_path))
    store = RunStore("digits", tmp_path)
    key = _keys(study, cfg)[0]
    before = _metrics(store, key)
    (store.run_dir(key) / "metrics.json").write_text('{"train_loss": 0.5,\n')
    assert runner.run_benchmark("digits", cfg, _launch(tmp_path)) == 0
    assert f"{store.run_dir(key) / 'metrics.json'} is unreadable" in capsys.readouterr().err
    assert (store.run_dir(key) / "metrics.json.corrupt").exists()
    assert _metrics(store, key) == before


def test_a_corrupt_status_json_counts_as_interrupted_and_blocks_nothing(study, tmp_path):
    cfg = {"epochs": 1, "seeds": [0, 1], "profile": "test"}
    store = RunStore("digits", tmp_path)
    key = _keys(study, cfg)[0]
    store.set_status(key, "running")
    (store.run_dir(key) / "status.json").write_text("{not json")
    assert store.status(key) == "interrupted"
    assert runner.run_benchmark("digits", cfg, _launch(tmp_path)) == 0
    assert all(store.is_finished(r.key) for r in study.plan(cfg))


def test_a_damaged_run_yaml_neither_hides_a_result_nor_breaks_rerun(study, tmp_path, monkeypatch, capsys):
    from benchmarks.__main__ import main
    from tests.benchmarks.digits_study import REGISTRATION

    cfg = {"epochs": 1, "seeds": [0, 1], "profile": "test"}
    runner.run_benchmark("digits", cfg, _launch(tmp_path))
    store = RunStore("digits", tmp_path)
    key = _keys(study, cfg)[0]
    (store.run_dir(key) / "run.yaml").write_text("study: [digits\n")
    monkeypatch.setenv("TSUITE_EXTRA_STUDIES", REGISTRATION)
    config = tmp_path / "cfg.yaml"
    config.write_text("epochs: 1\nseeds: [0, 1]\nprofile: test\n")
    assert main(["report", "digits", "--config", str(config), "--results", str(tmp_path)]) == 0
    findings = json.loads((store.root / "findings.json").read_text())
    assert findings["completeness"] == "4 of 4 runs"
    assert main(["rerun", str(store.run_dir(key))]) == 2
    assert f"{store.run_dir(key) / 'run.yaml'} is unreadable" in capsys.readouterr().err


# --- 5. the environment: read-only or full disk, W&B online without a key or a network ----------

def _refuse_writes_under(monkeypatch, root, code: int) -> None:
    """Every atomic write below ``root`` fails as the file system would (EROFS, ENOSPC)."""
    import errno

    import analysis.files

    real = analysis.files.atomic_write

    def refusing(path, write, **kwargs):
        if str(path).startswith(str(root)):
            raise OSError(code, os.strerror(code), str(path))
        return real(path, write, **kwargs)

    monkeypatch.setattr(analysis.files, "atomic_write", refusing)
    monkeypatch.setattr("benchmarks.core.runstore.atomic_write", refusing)
    assert code in (errno.EROFS, errno.ENOSPC)


def test_a_read_only_store_of_finished_runs_still_gives_status_and_the_report(study, tmp_path, monkeypatch, capsys):
    import errno

    from benchmarks.__main__ import main
    from tests.benchmarks.digits_study import REGISTRATION

    cfg = {"epochs": 1, "seeds": [0, 1], "profile": "test"}
    runner.run_benchmark("digits", cfg, _launch(tmp_path))
    report = (RunStore("digits", tmp_path).root / "report.md").read_text()
    monkeypatch.setenv("TSUITE_EXTRA_STUDIES", REGISTRATION)
    config = tmp_path / "cfg.yaml"
    config.write_text("epochs: 1\nseeds: [0, 1]\nprofile: test\n")
    _refuse_writes_under(monkeypatch, tmp_path / "digits", errno.EROFS)
    capsys.readouterr()
    args = ["--config", str(config), "--results", str(tmp_path)]
    assert main(["digits", *args]) == 2
    err = capsys.readouterr().err
    assert "Read-only file system" in err and "report digits --stdout" in err and "Traceback" not in err
    assert main(["status", "digits", *args]) == 0
    assert "4 finished" in capsys.readouterr().out
    assert main(["report", "digits", "--stdout", *args]) == 0
    assert capsys.readouterr().out == report


def test_a_full_disk_during_a_run_is_one_paragraph_and_the_run_resumes_later(study, tmp_path, monkeypatch, capsys):
    import errno

    from benchmarks.__main__ import main
    from tests.benchmarks.digits_study import REGISTRATION

    monkeypatch.setenv("TSUITE_EXTRA_STUDIES", REGISTRATION)
    config = tmp_path / "cfg.yaml"
    config.write_text("epochs: 1\nseeds: [0]\nprofile: test\n")
    with monkeypatch.context() as patch:
        metrics = RunStore("digits", tmp_path).run_dir(_keys(study, {"seeds": [0], "epochs": 1})[0]) / "metrics.json"
        _refuse_writes_under(patch, metrics, errno.ENOSPC)
        assert main(["digits", "--config", str(config), "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "the disk is full" in err and "metrics.json" in err and "Traceback" not in err
    assert main(["digits", "--config", str(config), "--results", str(tmp_path)]) == 0


@pytest.mark.parametrize("setup, message", [
    ({"WANDB_API_KEY": ""}, "no W&B API key"),
    ({"WANDB_API_KEY": "x"}, "API key for api.wandb.ai is malformed (API key must have 40+ characters"),
    ({"WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"}, "cannot be reached"),
])
def test_wandb_online_without_a_key_or_a_network_fails_before_any_training(study, tmp_path, monkeypatch, capsys,
                                                                           setup, message):
    from benchmarks.__main__ import main
    from tests.benchmarks.digits_study import REGISTRATION

    monkeypatch.setenv("TSUITE_EXTRA_STUDIES", REGISTRATION)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    for name, value in setup.items():
        monkeypatch.setenv(name, value)
    config = tmp_path / "cfg.yaml"
    config.write_text("epochs: 1\nseeds: [0]\nprofile: test\n")
    monkeypatch.setenv("WANDB_MODE", "offline")  # restored after the test: --wandb online sets it
    assert main(["digits", "--config", str(config), "--results", str(tmp_path), "--wandb", "online"]) == 2
    err = capsys.readouterr().err
    assert message in err and "use --wandb offline" in err
    assert not list(tmp_path.glob("digits/*/run.yaml"))  # nothing started


# --- 6. W&B continuity ----------------------------------------------------------------------------

def test_a_resumed_run_continues_one_wandb_history(study, tmp_path):
    from benchmarks.core.wandb_reader import find_offline_runs, read_offline_run

    cfg = {"epochs": 4, "seeds": [0], "profile": "test"}
    study.interrupt_at = 1
    assert runner.run_benchmark("digits", cfg, _launch(tmp_path)) == 130
    study.interrupt_at = None
    assert runner.run_benchmark("digits", cfg, _launch(tmp_path)) == 0
    parts = find_offline_runs(RunStore("digits", tmp_path).run_dir(_keys(study, cfg)[0]))
    assert len(parts) == 2  # one offline directory per process, the same run id
    first, second = (read_offline_run(part).series("_step") for part in sorted(parts))
    assert first and second and min(second) > max(first)  # steps never restart


def test_kill_9_of_a_run_and_its_wandb_service_loses_no_epoch_the_csv_has(tmp_path):
    """``kill -9`` of the whole process group, wandb-core included: every epoch the run's CSV had one flush
    interval before the kill is in its offline W&B history (read with wandb's own reader). With wandb's default
    interval (15 s) the history of this run is empty."""
    import signal
    import time

    import yaml

    from benchmarks.core.wandb_logger import FLUSH_SECONDS
    from benchmarks.core.wandb_reader import find_offline_runs, read_offline_run
    from tests.benchmarks.digits_study import REGISTRATION, DigitsStudy

    repo = Path(__file__).resolve().parents[3]
    cfg = {"epochs": 30, "seeds": [0], "epoch_delay": 0.5, "profile": "test"}
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "TSUITE_EXTRA_STUDIES": REGISTRATION, "PYTHONPATH": str(repo)}
    job = subprocess.Popen([sys.executable, "-m", "benchmarks", "digits", "--config", str(config), "--results",
                            str(tmp_path), "--jobs", "1"], env=env, cwd=repo, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = RunStore("digits", tmp_path).run_dir(_keys(DigitsStudy(), cfg)[0])
    csv_file = run_dir / "csv" / "metrics.csv"
    deadline = time.time() + 300
    while time.time() < deadline and job.poll() is None and _csv_epochs(csv_file) < 3:
        time.sleep(0.1)
    before = _csv_epochs(csv_file)
    time.sleep(FLUSH_SECONDS + 1.0)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait(timeout=60)
    assert 3 <= before and _csv_epochs(csv_file) < cfg["epochs"], "the run was not killed mid-training"
    (part,) = find_offline_runs(run_dir)
    logged = read_offline_run(part, wait=0)
    assert len(logged.series("train/loss")) >= before


def _csv_epochs(path: Path) -> int:
    """Epochs with a train/loss row in a run's CSV log."""
    import csv

    if not path.exists():
        return 0
    with path.open(newline="") as file:
        return sum(1 for row in csv.DictReader(file) if row.get("train/loss"))
