"""The runner on a real (small) study: sklearn digits, a linear model, two seeds x two stages.

Shows: finished runs are never redone; an interrupted run resumes from its last checkpoint; every
run leaves run.yaml, metrics.json and an offline W&B run with its history; a run can be redone alone.
"""

from __future__ import annotations

import torch

from benchmarks.core import runner
from benchmarks.core.rerun import rerun
from benchmarks.core.runstore import RunStore
from benchmarks.core.wandb_reader import find_offline_runs, read_offline_run


def test_runs_every_stage_and_skips_finished_runs(study, tmp_path):
    cfg = {"epochs": 3, "seeds": [0, 1], "profile": "test"}
    assert runner.run_benchmark("digits", cfg, runner.Launch(results=str(tmp_path))) == 0
    assert len(study.executed) == 4
    store = RunStore("digits", tmp_path)
    runs = store.finished_runs()
    assert sorted(r["stage"] for r in runs) == ["finetune", "finetune", "pretrain", "pretrain"]
    pre = [r for r in runs if r["stage"] == "pretrain"][0]
    assert pre["metrics"]["epochs"] == 3
    history = read_offline_run(find_offline_runs(pre["dir"])[0])
    assert len(history.series("train/loss")) == 3
    assert history.group == "digits" and history.job_type == "pretrain"
    study.executed.clear()
    runner.run_benchmark("digits", cfg, runner.Launch(results=str(tmp_path)))
    assert study.executed == []


def test_interrupted_run_resumes_from_its_checkpoint(study, tmp_path):
    cfg = {"epochs": 4, "seeds": [0], "profile": "test"}
    study.interrupt_at = 1
    code = runner.run_benchmark("digits", cfg, runner.Launch(results=str(tmp_path)))
    assert code == 130
    store = RunStore("digits", tmp_path)
    key = study.plan(cfg)[0].key
    assert store.status(key) == "interrupted" and store.last_checkpoint(key) is not None
    assert torch.load(store.last_checkpoint(key), weights_only=False)["epoch"] == 0  # saved after epoch 0
    study.interrupt_at = None
    assert runner.run_benchmark("digits", cfg, runner.Launch(results=str(tmp_path))) == 0
    assert store.metrics(key)["epochs"] == 4
    # one W&B run id across the interruption
    assert len(find_offline_runs(store.run_dir(key))) >= 1
    ids = {read_offline_run(p).run_id for p in find_offline_runs(store.run_dir(key))}
    assert len(ids) == 1


def test_same_seed_same_metrics_and_rerun_alone(study, tmp_path):
    cfg = {"epochs": 2, "seeds": [0], "profile": "test"}
    runner.run_benchmark("digits", cfg, runner.Launch(results=str(tmp_path / "a")))
    key = study.plan(cfg)[0].key
    first = RunStore("digits", tmp_path / "a").metrics(key)
    rerun(RunStore("digits", tmp_path / "a").run_dir(key), results=str(tmp_path / "b"))
    again = RunStore("digits", tmp_path / "b").metrics(key)
    assert again["train_loss"] == first["train_loss"]


def test_eta_prices_each_remaining_run_at_its_own_stage_mean():
    from benchmarks.core.grid import eta
    from benchmarks.core.study import Run

    source, target = Run("s", "source", {"seed": 0}, {}), Run("s", "target", {"seed": 0}, {})
    assert eta({}, [source]) == ""
    assert eta({"source": [100.0, 140.0]}, []) == ""
    assert eta({"source": [100.0, 140.0], "target": [10.0]}, [source, target, target]) == " · ETA 2m20s"
    # a stage with no finished run yet is not priced from another stage's runs
    assert eta({"source": [60.0]}, [source, target, target]) == " · ETA 1m00s + 2 target runs not yet timed"
    assert eta({"source": [60.0]}, [target]) == " · ETA unknown + 1 target run not yet timed"
