"""The ModuleCriticality callback: ``analysis.criticality`` at fit end, reported as grids, files and W&B."""

import json
import math

import pytest
import torch

from analysis.criticality import module_criticality
from callbacks import CallbackConfigError, ModuleCriticality
from tests.callbacks.tiny_callback_models import (
    TinyClassifier,
    loader,
    make_trainer,
    media_types,
    read_wandb,
    wandb_logger,
)

ALPHAS, SIGMAS = (0.0, 0.5, 1.0), (0.0, 0.01, 0.1)


def trained(tmp_path, frozen=("net.block2",), logger=None, callbacks=()):
    model = TinyClassifier(frozen=frozen, lr=0.2)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = make_trainer(tmp_path, list(callbacks), epochs=3, logger=logger)
    trainer.fit(model, loader(64, batch_size=16, shuffle=True))
    return model, start


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


def test_bad_settings_are_refused_when_the_callback_is_made():
    with pytest.raises(CallbackConfigError, match='Did you mean "relative"'):
        ModuleCriticality(loader(8), noise="relativ")
    with pytest.raises(CallbackConfigError, match="finite values >= 0"):
        ModuleCriticality(loader(8), sigmas=[-1.0])
