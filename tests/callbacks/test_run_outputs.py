"""RunOutputs and its helpers: atomic files, rank-0-only writing, finding the W&B run."""

import json
import math

import pytest
import torch

from callbacks.run_outputs import RunOutputs, atomic_write, find_wandb_run, read_arrays, write_arrays, write_json
from tests.callbacks.tiny_callback_models import make_trainer, read_wandb, wandb_logger


def test_atomic_write_replaces_whole_files_and_keeps_the_old_one_on_failure(tmp_path):
    target = tmp_path / "deep" / "file.txt"
    atomic_write(target, lambda tmp: tmp.write_text("first"))
    assert target.read_text() == "first"

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_text() == "first"
    assert [p.name for p in target.parent.iterdir()] == ["file.txt"]  # no temp file left behind


def test_json_turns_tensors_into_lists_and_non_finite_numbers_into_null(tmp_path):
    write_json(tmp_path / "x.json", {"t": torch.tensor([1.5, 2.0]), "inf": math.inf, "nested": [math.nan]})
    assert json.loads((tmp_path / "x.json").read_text()) == {"t": [1.5, 2.0], "inf": None, "nested": [None]}


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_arrays_round_trip(tmp_path, suffix):
    arrays = {"net.block1": torch.randn(3, 4), "net.head": torch.arange(6.0).reshape(2, 3)}
    loaded = read_arrays(write_arrays(tmp_path / f"a{suffix}", arrays))
    assert all(torch.equal(loaded[k], v) for k, v in arrays.items())


def test_unknown_array_format_names_the_fix(tmp_path):
    with pytest.raises(ValueError, match=r"\.safetensors or \.npz"):
        write_arrays(tmp_path / "a.pt", {"x": torch.zeros(1)})


class FakeTrainer:
    def __init__(self, rank, root, loggers=()):
        self.global_rank, self.is_global_zero, self.default_root_dir, self.loggers = rank, rank == 0, root, loggers


def test_only_global_rank_zero_writes(tmp_path):
    assert RunOutputs(FakeTrainer(1, tmp_path)).json("r.json", {"a": 1}) is None
    assert not (tmp_path / "r.json").exists()
    assert RunOutputs(FakeTrainer(0, tmp_path)).json("r.json", {"a": 1}) == tmp_path / "r.json"


def test_the_wandb_run_is_found_among_the_loggers(tmp_path):
    assert find_wandb_run(make_trainer(tmp_path, [], logger=False)) is None
    trainer = make_trainer(tmp_path, [], logger=[wandb_logger(tmp_path)])
    run = find_wandb_run(trainer)
    assert run is trainer.loggers[0].experiment
    RunOutputs(trainer).log({"probe/value": 2.5})
    assert read_wandb(tmp_path).series("probe/value") == [2.5]
