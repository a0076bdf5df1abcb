"""RunOutputs and its helpers: atomic files, rank-0-only writing, finding the W&B run; and the acceptance
check that everything the callbacks log reaches the offline W&B run (read back) and the run directory."""

import json
import math

import pytest
import torch

from callbacks import Interpolation, ModuleCriticality, RepresentationSnapshot, SimilarityTracker
from callbacks.run_outputs import (
    RunOutputs,
    find_wandb_run,
    json_safe,
    read_arrays,
    write_arrays,
    write_json,
)
from tests.callbacks.tiny_callback_models import (
    TinyClassifier,
    blob_images,
    loader,
    make_trainer,
    read_wandb,
    wandb_logger,
)


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


class Recorder:
    """Wraps RunOutputs' W&B and file methods and remembers every call the callbacks make."""

    def __init__(self, monkeypatch):
        self.rows, self.summary, self.tables, self.figures = [], {}, {}, []
        original = {name: getattr(RunOutputs, name) for name in ("log", "summary", "table", "figure")}

        def log(outputs, row):
            if outputs.run is not None:
                self.rows.append(dict(row))
            original["log"](outputs, row)

        def summary(outputs, values):
            if outputs.run is not None:
                self.summary.update(json_safe(dict(values)))
            original["summary"](outputs, values)

        def table(outputs, key, rows):
            if outputs.run is not None and rows:
                self.tables[key] = json_safe([dict(r) for r in rows])
            original["table"](outputs, key, rows)

        def figure(outputs, name, fig, wandb_key=None):
            path = original["figure"](outputs, name, fig, wandb_key)
            if path is not None and wandb_key and outputs.run is not None:
                self.figures.append((wandb_key, path))
            return path

        for name, fn in (("log", log), ("summary", summary), ("table", table), ("figure", figure)):
            monkeypatch.setattr(RunOutputs, name, fn)


def numbers_in(obj) -> set:
    if isinstance(obj, dict):
        return set().union(*(numbers_in(v) for v in obj.values())) if obj else set()
    if isinstance(obj, list):
        return set().union(*(numbers_in(v) for v in obj)) if obj else set()
    return {obj} if isinstance(obj, int | float) and not isinstance(obj, bool) else set()


def test_everything_the_callbacks_log_reaches_the_offline_wandb_run_and_the_run_directory(tmp_path, monkeypatch):
    recorder = Recorder(monkeypatch)
    snapshot = RepresentationSnapshot(blob_images(24, seed=7), probe_size=24)
    callbacks = [snapshot, SimilarityTracker(("start", "random_init")),
                 Interpolation(loader(32, seed=8), lambdas=3, bn_loader=loader(32, seed=9), bn_batches=2),
                 ModuleCriticality(loader(32, seed=10), modules=["net.block4", "net.head"], alphas=(0.0, 1.0),
                                   sigmas=(0.0, 0.05), draws=1)]
    trainer = make_trainer(tmp_path, callbacks, epochs=2, logger=wandb_logger(tmp_path, "everything"))
    trainer.fit(TinyClassifier(), loader(64, batch_size=16))
    run = read_wandb(tmp_path)
    run_files = next((tmp_path / "wandb").glob("offline-run-*")) / "files"
    assert {key.split("/")[0] for row in recorder.rows for key in row} >= {"sim", "interp", "crit"}

    # scalars: every logged row is in the W&B history, in order, with the same values
    history = iter(run.history)
    for row in recorder.rows:
        assert any(all(h.get(k) == v for k, v in row.items()) for h in history), f"not in W&B history: {row}"
    assert all(run.summary[key] == value for key, value in recorder.summary.items())
    # tables: the same rows in W&B's table file; images: the same PNG bytes as the run directory's file
    for key, rows in recorder.tables.items():
        logged = [h for h in run.history if h.get(f"{key}._type") == "table-file"][-1]
        table = json.loads((run_files / logged[f"{key}.path"]).read_text())
        assert [dict(zip(table["columns"], values)) for values in table["data"]] == rows, key
    assert len(recorder.figures) == 6  # 2 heatmaps + 2 curve plots + interpolation + criticality
    for key, path in recorder.figures:
        logged = [h for h in run.history if h.get(f"{key}._type") == "image-file"][-1]
        assert (run_files / logged[f"{key}.path"]).read_bytes() == path.read_bytes(), key
        assert path.parent == tmp_path

    # run directory: every number sent to W&B is also in a JSON file there; snapshots match the manifest
    on_disk = set().union(*(numbers_in(json.loads(p.read_text())) for p in tmp_path.glob("*.json")))
    sent = numbers_in(recorder.rows) | numbers_in(recorder.summary) | numbers_in(recorder.tables)
    assert sent <= on_disk, sorted(sent - on_disk)[:5]
    manifest = json.loads((tmp_path / "snapshots" / "manifest.json").read_text())
    assert [entry["tag"] for entry in manifest["snapshots"]] == ["fit_start", "epoch0", "epoch1"]
    for entry, taken in zip(manifest["snapshots"], snapshot.snapshots):
        saved = read_arrays(tmp_path / entry["file"])
        assert all(torch.equal(saved[k], v) for k, v in taken.representations.items())


def test_outputs_of_work_outside_a_trainer_write_from_rank_zero_only(tmp_path):
    """Analyses of trained weights (no Trainer) write through the same route: files on rank 0, none elsewhere."""
    from callbacks.run_outputs import RunOutputs

    zero = RunOutputs.of_loggers([], tmp_path / "zero", global_rank=0)
    one = RunOutputs.of_loggers([], tmp_path / "one", global_rank=1)
    assert zero.json("a.json", {"x": 1}) is not None and (tmp_path / "zero" / "a.json").exists()
    assert one.json("a.json", {"x": 1}) is None and not (tmp_path / "one").exists()
    assert zero.run is None and one.run is None  # no WandbLogger given: W&B calls are no-ops
    zero.log({"x": 1})
