"""Module criticality: an untrained module gets the minimum (0); grids, files and W&B reports."""

import json
import math

import pytest
import torch

from callbacks import CallbackConfigError, ModuleCriticality, criticality_value, module_criticality
from tests.callbacks.tiny_callback_models import (
    TinyClassifier,
    loader,
    make_trainer,
    media_types,
    read_wandb,
    wandb_logger,
)

ALPHAS, SIGMAS = (0.0, 0.5, 1.0), (0.0, 0.01, 0.1)


def test_value_is_zero_without_movement_and_infinite_without_noise():
    assert criticality_value(0.0, 5.0, 0.0) == 0.0  # fully rewound module
    assert criticality_value(0.7, 0.0, 0.0) == 0.0  # module that never moved
    assert math.isinf(criticality_value(0.5, 4.0, 0.0))
    assert criticality_value(0.5, 4.0, 0.5) == pytest.approx(0.25 * 4.0 / 0.25)


def trained(tmp_path, frozen=("net.block2",), logger=None, callbacks=()):
    model = TinyClassifier(frozen=frozen, lr=0.2)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = make_trainer(tmp_path, list(callbacks), epochs=3, logger=logger)
    trainer.fit(model, loader(64, batch_size=16, shuffle=True))
    return model, start


def test_a_module_that_did_not_train_has_the_minimum_criticality(tmp_path):
    model, start = trained(tmp_path)
    result = module_criticality(model, start, model.state_dict(), loader(64), ["net.block2", "net.block3", "net.head"],
                                alphas=ALPHAS, sigmas=SIGMAS, epsilon=0.05, draws=2)
    crit = result.criticality()
    assert result.modules["net.block2"].distance_sq == 0.0
    assert crit["net.block2"] == 0.0 == min(crit.values())
    assert all(value >= 0.0 for value in crit.values())
    assert result.modules["net.head"].distance_sq > 0.0
    # alpha=1, sigma=0 restores thetaf exactly, so it always passes
    assert all(m.passes[ALPHAS.index(1.0)][SIGMAS.index(0.0)] for m in result.modules.values())
    assert result.modules["net.head"].error[ALPHAS.index(1.0)][0] == result.reference_error


def test_noise_is_reproducible_and_relative_noise_scales_with_the_weights(tmp_path):
    model, start = trained(tmp_path, frozen=())
    args = (model, start, model.state_dict(), loader(32), ["net.head"])
    first = module_criticality(*args, alphas=(1.0,), sigmas=(0.5,), draws=2, seed=4)
    again = module_criticality(*args, alphas=(1.0,), sigmas=(0.5,), draws=2, seed=4)
    assert first.modules["net.head"].loss == again.modules["net.head"].loss
    tiny = module_criticality(*args, alphas=(1.0,), sigmas=(1e-6,), noise="relative", draws=1)
    assert tiny.modules["net.head"].loss[0][0] == pytest.approx(tiny.reference_loss, rel=1e-4)


def test_bad_options_are_explained():
    model = TinyClassifier()
    with pytest.raises(CallbackConfigError, match='Did you mean "relative"'):
        module_criticality(model, model, model, loader(8), ["net.head"], noise="relativ")
    with pytest.raises(CallbackConfigError, match="no parameters"):
        module_criticality(model, model, model, loader(8), ["net.block1.2"])  # a ReLU
    with pytest.raises(CallbackConfigError, match='Did you mean "net.block1"'):
        module_criticality(model, model, model, loader(8), ["net.blok1"])


def test_callback_reports_heatmaps_tables_and_curve_against_module_index(tmp_path):
    callback = ModuleCriticality(loader(64), modules=["net.block2", "net.head"], alphas=ALPHAS, sigmas=SIGMAS,
                                 draws=1)
    model, start = trained(tmp_path, logger=wandb_logger(tmp_path), callbacks=[callback])
    expected = module_criticality(model, start, model.state_dict(), loader(64), ["net.block2", "net.head"],
                                  alphas=ALPHAS, sigmas=SIGMAS, draws=1)
    assert callback.result.criticality() == expected.criticality()
    saved = json.loads((tmp_path / "crit.json").read_text())
    assert saved["modules"]["net.block2"]["criticality"] == 0.0
    assert saved["modules"]["net.head"]["error"] == expected.modules["net.head"].error
    assert len((tmp_path / "crit.csv").read_text().splitlines()) == 1 + 2 * len(ALPHAS) * len(SIGMAS)
    assert (tmp_path / "crit.png").read_bytes()[:4] == b"\x89PNG"

    run = read_wandb(tmp_path)
    definitions = {d["name"]: d["step_metric"] for d in run.metric_definitions}
    assert definitions["crit/criticality"] == "crit/module_index"
    assert run.summary["crit/net.block2"] == 0.0
    head = expected.modules["net.head"].criticality
    assert run.summary["crit/net.head"] == (pytest.approx(head) if math.isfinite(head) else None)
    assert media_types(run) == {"crit/summary": "table-file", "crit/grid": "table-file",
                                "crit/heatmaps": "image-file"}
    assert torch.equal(model.net.block2[0].weight, start["net.block2.0.weight"])
