"""Interpolation curves: exact end points, zero barrier for a model with itself, BN recomputation."""

import pytest
import torch

from analysis.errors import ConfigError
from analysis.evaluation import evaluate
from analysis.interpolation import barrier, chord, interpolation_curve, lambda_grid
from tests.analysis.tiny_models import TinyNet, loader


def two_states(norm: bool = True):
    a, b = TinyNet(norm=norm, seed=1), TinyNet(norm=norm, seed=2)
    return a, a.state_dict(), b.state_dict()


def test_curve_end_points_equal_the_evaluated_end_points_exactly():
    model, state_a, state_b = two_states()
    data = loader(48, seed=3)
    result = interpolation_curve(model, state_a, state_b, data, lambdas=5)
    assert result.lambdas == [0.0, 0.25, 0.5, 0.75, 1.0]
    for lam, state in ((0.0, state_a), (1.0, state_b)):
        reference = TinyNet(seed=9)
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
    with pytest.raises(ConfigError, match="include 0.0 and 1.0"):
        barrier([0.2, 1.0], [1.0, 2.0])


def test_chord_is_exact_at_both_ends_and_constant_between_equal_values():
    assert chord(0.1, 0.7, 0.0) == 0.1 and chord(0.1, 0.7, 1.0) == 0.7
    assert chord(0.3, 0.3, 0.37) == 0.3
    assert chord(1.0, 3.0, 0.25) == 1.5


def test_bn_recomputation_changes_a_bn_model_and_not_a_bn_free_one():
    data, train = loader(32, seed=5), loader(64, seed=6)
    for norm, should_change in ((True, True), (False, False)):
        model, state_a, state_b = two_states(norm)
        plain = interpolation_curve(model, state_a, state_b, data, lambdas=3)
        recomputed = interpolation_curve(model, state_a, state_b, data, lambdas=3, bn_loader=train)
        assert recomputed.bn_recomputed is should_change
        assert (plain.loss != recomputed.loss) is should_change


def test_lambda_grid_is_even_for_a_count_and_sorted_for_a_list():
    assert lambda_grid(3) == [0.0, 0.5, 1.0]
    assert lambda_grid(torch.tensor([1.0, 0.0, 0.5, 0.5])) == [0.0, 0.5, 1.0]
    with pytest.raises(ConfigError, match="at least 2"):
        lambda_grid(1)


def test_lambda_grid_without_end_points_is_refused():
    model, state_a, state_b = two_states()
    with pytest.raises(ConfigError, match="lacks 0 or 1"):
        interpolation_curve(model, state_a, state_b, loader(8), lambdas=[0.0, 0.5])


def test_result_rows_and_dict_carry_the_curve():
    model, state_a, state_b = two_states()
    result = interpolation_curve(model, state_a, state_b, loader(16), lambdas=3)
    assert [row["lambda"] for row in result.rows()] == [0.0, 0.5, 1.0]
    assert [row["loss"] for row in result.rows()] == result.loss
    assert result.to_dict()["loss_barrier"] == result.loss_barrier
