"""Two DDP CPU processes report the same numbers as one process.

The callbacks' DDP choice: every rank runs the same probe/analysis data through its own replica (no
collective inside a callback); global rank 0 alone writes files and logs.
- With BatchNorm (not synchronised on CPU, so DDP training itself differs from one process): ddp_spawn
  hands rank 0's final weights back to this process, where the same analyses are recomputed.
- Without BatchNorm, 2 processes x batch 8 train like 1 process x batch 16 (the same examples per step,
  ``RankBatchSampler``; gradients averaged), so whole runs are compared: every similarity row, snapshot,
  interpolation and criticality value in the files and in W&B.
"""

import json
from pathlib import Path

import pytest
import torch

from analysis.criticality import module_criticality
from analysis.interpolation import interpolation_curve
from callbacks import (
    Interpolation,
    ModuleCriticality,
    RepresentationSnapshot,
    SimilarityTracker,
)
from callbacks.references import random_init_copy
from callbacks.run_outputs import read_arrays
from similarity import get_measure
from tests.callbacks.tiny_callback_models import (
    TinyClassifier,
    blob_images,
    loader,
    make_trainer,
    rank_split_loader,
    read_wandb,
    wandb_logger,
)

CRIT = {"alphas": (0.0, 1.0), "sigmas": (0.0, 0.05), "draws": 1}


@pytest.mark.ddp
def test_two_processes_give_the_numbers_of_one(tmp_path):
    model = TinyClassifier(seed=3)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    probe = blob_images(24, seed=7)
    callbacks = [
        RepresentationSnapshot(probe, probe_size=24),
        SimilarityTracker(("start", "random_init")),
        Interpolation(loader(32, seed=8), lambdas=3, bn_loader=loader(32, seed=9), bn_batches=2),
        ModuleCriticality(loader(32, seed=10), modules=["net.block4", "net.head"], **CRIT),
    ]
    trainer = make_trainer(tmp_path, callbacks, epochs=2, devices=2, strategy="ddp_spawn",
                           logger=wandb_logger(tmp_path, "ddp"))
    trainer.fit(model, loader(64, batch_size=8))
    final = model.state_dict()  # rank 0's weights, handed back by ddp_spawn
    assert not torch.equal(final["net.head.weight"], start["net.head.weight"])

    # similarity: recompute fit-start and final rows in this single process
    cka = get_measure("linear_cka")
    snap = RepresentationSnapshot(probe, probe_size=24)
    start_model = TinyClassifier(seed=99)
    start_model.load_state_dict(start)
    at_start, at_end = snap.capture(start_model), snap.capture(model)
    random_init = snap.capture(random_init_copy(model))
    rows = json.loads((tmp_path / "similarity.json").read_text())["rows"]
    assert {r["tag"] for r in rows} == {"fit_start", "epoch0", "epoch1"}
    for row in rows:
        current = {"fit_start": at_start, "epoch1": at_end}.get(row["tag"])
        if current is None:
            continue
        reference = at_start if row["reference"] == "start" else random_init
        layer = row["layer"]
        expected = cka(current[layer].flatten(1), reference[layer].flatten(1))
        # the tracker takes the layer x layer path of similarity_matrix: float32 products, another order
        assert row["value"] == pytest.approx(expected, rel=1e-6), row

    interp = interpolation_curve(model, start, final, loader(32, seed=8), lambdas=3,
                                 bn_loader=loader(32, seed=9), bn_batches=2)
    saved = json.loads((tmp_path / "interp.json").read_text())
    assert saved["loss"] == pytest.approx(interp.loss, rel=1e-9)
    assert saved["error"] == interp.error and saved["loss_barrier"] == pytest.approx(interp.loss_barrier)

    crit = module_criticality(model, start, final, loader(32, seed=10), ["net.block4", "net.head"], **CRIT)
    saved = json.loads((tmp_path / "crit.json").read_text())
    for name, result in crit.modules.items():
        assert saved["modules"][name]["error"] == result.error
        assert sum(saved["modules"][name]["loss"], []) == pytest.approx(sum(result.loss, []), rel=1e-9)

    # only rank 0 logged (to the run ddp_spawn's main process created): one row per snapshot
    run = read_wandb(tmp_path)
    assert len(run.series("sim/start/net.head")) == 3
    assert run.series("interp/loss") == pytest.approx(interp.loss, rel=1e-9)


def run_everything(root: Path, devices: int):
    """A norm-free TinyClassifier trained 2 epochs on 64 examples (global batch 16) with every callback."""
    model = TinyClassifier(norm=False, seed=3)
    callbacks = [
        RepresentationSnapshot(blob_images(24, seed=7), probe_size=24),
        SimilarityTracker(("start", "random_init")),
        Interpolation(loader(32, seed=8), lambdas=3),
        ModuleCriticality(loader(32, seed=10), modules=["net.block4", "net.head"], **CRIT),
    ]
    options = {"strategy": "ddp_spawn"} if devices > 1 else {}
    trainer = make_trainer(root, callbacks, epochs=2, devices=devices, logger=wandb_logger(root, f"p{devices}"),
                           use_distributed_sampler=False, **options)
    trainer.fit(model, rank_split_loader(64, global_batch=16))
    return model, read_wandb(root)


@pytest.mark.ddp
def test_two_processes_train_and_report_like_one_process(tmp_path):
    one_model, one_run = run_everything(tmp_path / "one", devices=1)
    two_model, two_run = run_everything(tmp_path / "two", devices=2)
    close = {"rel": 1e-5, "abs": 1e-6}  # gradients summed across processes: another rounding order
    for key, value in one_model.state_dict().items():
        assert torch.allclose(two_model.state_dict()[key], value, rtol=1e-5, atol=1e-6), key

    def saved(name: str, devices: str):
        return json.loads((tmp_path / devices / name).read_text())

    one_rows, two_rows = saved("similarity.json", "one")["rows"], saved("similarity.json", "two")["rows"]
    assert len(one_rows) == 3 * 2 * 5  # 3 snapshots x 2 references x 5 layers
    assert [{k: v for k, v in r.items() if k != "value"} for r in two_rows] == \
        [{k: v for k, v in r.items() if k != "value"} for r in one_rows]
    assert [r["value"] for r in two_rows] == pytest.approx([r["value"] for r in one_rows], **close)
    for entry in saved("snapshots/manifest.json", "one")["snapshots"]:
        one, two = read_arrays(tmp_path / "one" / entry["file"]), read_arrays(tmp_path / "two" / entry["file"])
        assert all(torch.allclose(two[k], v, rtol=1e-5, atol=1e-6) for k, v in one.items()), entry["file"]
    for key in ("loss", "error"):
        assert saved("interp.json", "two")[key] == pytest.approx(saved("interp.json", "one")[key], **close)
    one_crit, two_crit = saved("crit.json", "one")["modules"], saved("crit.json", "two")["modules"]
    for name, result in one_crit.items():
        assert two_crit[name]["error"] == result["error"]
        assert two_crit[name]["criticality"] == pytest.approx(result["criticality"], **close)

    logged = [k for k in one_run.summary if k.split("/")[0] in ("sim", "interp", "crit") and not k.endswith("_type")
              and isinstance(one_run.summary[k], float)]
    layers = TinyClassifier().default_watch_layers()
    assert set(logged) >= {f"sim/{ref}/{layer}" for ref in ("start", "random_init") for layer in layers} | {
        "interp/loss", "interp/error"}
    for key in logged:
        assert two_run.series(key) == pytest.approx(one_run.series(key), **close), key
