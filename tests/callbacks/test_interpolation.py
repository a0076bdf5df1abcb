"""Interpolation curves: exact end points, zero barrier for a model with itself, BN recomputation."""

import json

import pytest
import torch

from callbacks import CallbackConfigError, Interpolation, barrier, evaluate, interpolation_curve
from callbacks.evaluation import recompute_batchnorm
from tests.callbacks.tiny_callback_models import (
    TinyClassifier,
    loader,
    make_trainer,
    media_types,
    read_wandb,
    wandb_logger,
)


def two_states(norm: bool = True):
    a, b = TinyClassifier(norm=norm, seed=1), TinyClassifier(norm=norm, seed=2)
    return a, a.state_dict(), b.state_dict()


def test_curve_end_points_equal_the_evaluated_end_points_exactly():
    model, state_a, state_b = two_states()
    data = loader(48, seed=3)
    result = interpolation_curve(model, state_a, state_b, data, lambdas=5)
    assert result.lambdas == [0.0, 0.25, 0.5, 0.75, 1.0]
    for lam, state in ((0.0, state_a), (1.0, state_b)):
        reference = TinyClassifier(seed=9)
        reference.load_state_dict(state)
        loss, error = evaluate(reference, data)
        index = result.lambdas.index(lam)
        assert result.loss[index] == loss and result.error[index] == error
    assert result.loss_barrier >= 0.0 and result.error_barrier >= 0.0


def test_model_is_left_untouched():
    model, state_a, state_b = two_states()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    interpolation_curve(model, state_a, state_b, loader(16), lambdas=3, bn_loader=loader(16))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("bn_loader", [None, loader(32, seed=4)])
def test_barrier_of_a_model_with_itself_is_zero(bn_loader):
    model, state_a, _ = two_states()
    result = interpolation_curve(model, state_a, state_a, loader(32), lambdas=[0, 0.3, 0.5, 0.7, 1],
                                 bn_loader=bn_loader)
    assert result.loss_barrier == 0.0 and result.error_barrier == 0.0
    assert len(set(result.loss)) == 1


def test_barrier_is_the_largest_rise_above_the_chord():
    height, at = barrier([0.0, 0.5, 1.0, 0.25], [1.0, 4.0, 3.0, 1.0])
    # chord at 0.5 is 2.0 -> rise 2.0; at 0.25 the chord is 1.5 -> rise -0.5
    assert (height, at) == (2.0, 0.5)
    with pytest.raises(CallbackConfigError, match="include 0.0 and 1.0"):
        barrier([0.2, 1.0], [1.0, 2.0])


def test_bn_recomputation_changes_a_bn_model_and_not_a_bn_free_one():
    data, train = loader(32, seed=5), loader(64, seed=6)
    for norm, should_change in ((True, True), (False, False)):
        model, state_a, state_b = two_states(norm)
        plain = interpolation_curve(model, state_a, state_b, data, lambdas=3)
        recomputed = interpolation_curve(model, state_a, state_b, data, lambdas=3, bn_loader=train)
        assert recomputed.bn_recomputed is should_change
        assert (plain.loss != recomputed.loss) is should_change


def test_recomputed_statistics_are_the_plain_average_over_the_batches():
    model = TinyClassifier(seed=1)
    model.net.block1[1].momentum = 0.3
    model.eval()
    batches = loader(64, seed=6, batch_size=16)
    recompute_batchnorm(model, batches, num_batches=2)
    bn = model.net.block1[1]
    per_batch = []
    for x, _ in list(batches)[:2]:
        h = model.net.block1[0](x)
        per_batch.append(h.mean(dim=(0, 2, 3)))
    assert torch.allclose(bn.running_mean, torch.stack(per_batch).mean(0), atol=1e-6)
    assert bn.momentum == 0.3 and not bn.training and not model.training  # momentum and modes restored


def test_lambda_grid_without_end_points_is_refused():
    model, state_a, state_b = two_states()
    with pytest.raises(CallbackConfigError, match="lacks 0 or 1"):
        interpolation_curve(model, state_a, state_b, loader(8), lambdas=[0.0, 0.5])


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
