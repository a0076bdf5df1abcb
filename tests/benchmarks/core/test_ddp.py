"""The runner under Lightning DDP on 2 CPU processes (gloo) gives the 1-process result.

Full-batch training on the 512 digits: 2 ranks x 256 examples average to the same gradient as one
process on all 512, so the trained weights, the loss and the CKA of the logits with the start of
training (SimilarityTracker on a fixed probe set) must agree to float tolerance. Only rank 0 writes
the run store and the W&B run.
"""

import pytest
import torch

from benchmarks.core import runner
from benchmarks.core.runstore import RunStore
from benchmarks.core.wandb_reader import find_offline_runs
from tests.benchmarks.digits_study import DigitsStudy


@pytest.mark.ddp
def test_two_process_ddp_equals_one_process(tmp_path, monkeypatch):
    torch.multiprocessing.set_sharing_strategy("file_system")
    study = DigitsStudy()
    monkeypatch.setattr(runner, "get_study", lambda name: study)
    cfg = {"epochs": 3, "seeds": [0], "batch_size": 512, "profile": "test", "similarity": True}
    key = study.plan(cfg)[0].key
    runner.run_benchmark("digits", cfg, runner.Launch(results=str(tmp_path / "one"), stage="pretrain"))
    runner.run_benchmark("digits", cfg, runner.Launch(results=str(tmp_path / "two"), stage="pretrain",
                                                      devices=2, strategy="ddp_spawn"))
    one = RunStore("digits", tmp_path / "one").metrics(key)
    two = RunStore("digits", tmp_path / "two").metrics(key)
    assert one["epochs"] == 3  # (ddp_spawn does not bring current_epoch back to the main process)
    assert two["weight_norm"] == pytest.approx(one["weight_norm"], rel=1e-6)
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-5)
    assert one["snapshots"] == two["snapshots"] == 4  # fit start + 3 epochs
    assert one["cka_start_final"] < 1 - 1e-4  # training moved the logits away from the start
    assert two["cka_start_final"] == pytest.approx(one["cka_start_final"], abs=1e-6)
    assert len(find_offline_runs(RunStore("digits", tmp_path / "two").run_dir(key))) == 1


@pytest.mark.ddp
def test_every_rank_runs_the_plan_and_waits_for_dependencies(tmp_path):
    """`--strategy ddp` starts one process per rank that each walk the whole plan (as `srun` does on SLURM).

    The fine-tuning run needs the pretraining run: rank 1 must not start it before rank 0 has recorded
    the pretraining as finished (the runner waits at a barrier after every run).
    """
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from tests.benchmarks.digits_study import REGISTRATION

    repo = Path(__file__).resolve().parents[3]
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({"epochs": 1, "seeds": [0], "batch_size": 512, "profile": "test"}))
    env = {**os.environ, "TSUITE_EXTRA_STUDIES": REGISTRATION, "PYTHONPATH": str(repo)}
    done = subprocess.run([sys.executable, "-m", "benchmarks", "digits", "--config", str(config), "--results",
                           str(tmp_path), "--devices", "2", "--strategy", "ddp"],
                          env=env, cwd=repo, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    store = RunStore("digits", tmp_path)
    assert sorted(r["stage"] for r in store.finished_runs()) == ["finetune", "pretrain"]
