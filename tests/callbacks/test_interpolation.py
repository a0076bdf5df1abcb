"""The Interpolation callback: the curve of ``analysis.interpolation`` from fit start to fit end, reported."""

import json

import pytest

from analysis.interpolation import interpolation_curve
from callbacks import CallbackConfigError, Interpolation
from tests.callbacks.tiny_callback_models import (
    TinyClassifier,
    loader,
    make_trainer,
    media_types,
    read_wandb,
    wandb_logger,
)


def test_callback_interpolates_from_fit_start_to_fit_end_and_reports_against_lambda(tmp_path):
    callback = Interpolation(loader(32, seed=8), lambdas=5, bn_loader=loader(32, seed=9), bn_batches=2)
    model = TinyClassifier()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = make_trainer(tmp_path, [callback], epochs=2, logger=wandb_logger(tmp_path))
    trainer.fit(model, loader(64, shuffle=True))
    expected = interpolation_curve(model, start, model.state_dict(), loader(32, seed=8), lambdas=5,
                                   bn_loader=loader(32, seed=9), bn_batches=2)
    assert callback.result == expected
    saved = json.loads((tmp_path / "interp.json").read_text())
    assert saved["loss"] == expected.loss and saved["loss_barrier"] == expected.loss_barrier
    assert (tmp_path / "interp.csv").read_text().splitlines()[0] == "lambda,loss,error"
    assert (tmp_path / "interp.png").read_bytes()[:4] == b"\x89PNG"

    run = read_wandb(tmp_path)
    definitions = {d["name"]: d["step_metric"] for d in run.metric_definitions}
    assert {definitions[k] for k in ("interp/*", "interp/loss", "interp/error")} == {"interp/lambda"}
    curve_rows = [row for row in run.history if "interp/loss" in row]
    assert [row["interp/lambda"] for row in curve_rows] == expected.lambdas
    assert run.series("interp/loss") == pytest.approx(expected.loss)
    assert run.summary["interp/loss_barrier"] == pytest.approx(expected.loss_barrier)
    assert run.summary["interp/error_barrier"] == pytest.approx(expected.error_barrier)
    assert media_types(run) == {"interp/curve": "table-file", "interp/plot": "image-file"}


def test_bad_settings_are_refused_when_the_callback_is_made():
    with pytest.raises(CallbackConfigError, match="lacks 0 or 1"):
        Interpolation(loader(8), lambdas=[0.0, 0.5])
