"""Two DDP CPU processes report the same numbers as one process computing on the same weights.

The callbacks' DDP choice: every rank runs the same probe/analysis data through its own replica (no
collective inside a callback); global rank 0 alone writes files and logs. ddp_spawn hands rank 0's
final weights back to this process, where the same analyses are recomputed in a single process.
"""

import json

import pytest
import torch

from callbacks import (
    Interpolation,
    ModuleCriticality,
    RepresentationSnapshot,
    SimilarityTracker,
    interpolation_curve,
    module_criticality,
)
from callbacks.references import random_init_copy
from similarity import get_measure
from tests.callbacks.tiny_callback_models import (
    TinyClassifier,
    blob_images,
    loader,
    make_trainer,
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
