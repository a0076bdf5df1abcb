"""Module criticality: an untrained module gets the minimum (0); reproducible noise; clear errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from analysis.criticality import check_grid, criticality_value, module_criticality
from analysis.errors import ConfigError
from tests.analysis.tiny_models import TinyNet, loader, train

ALPHAS, SIGMAS = (0.0, 0.5, 1.0), (0.0, 0.01, 0.1)


def test_value_is_zero_without_movement_and_infinite_without_noise():
    assert criticality_value(0.0, 5.0, 0.0) == 0.0  # fully rewound module
    assert criticality_value(0.7, 0.0, 0.0) == 0.0  # module that never moved
    assert math.isinf(criticality_value(0.5, 4.0, 0.0))
    assert criticality_value(0.5, 4.0, 0.5) == pytest.approx(0.25 * 4.0 / 0.25)


def test_a_module_that_did_not_train_has_the_minimum_criticality():
    model = TinyNet()
    start = train(model, frozen=("net.block2",))
    final = {k: v.clone() for k, v in model.state_dict().items()}
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
    assert len(result.grid_rows()) == 3 * len(ALPHAS) * len(SIGMAS)
    assert all(torch.equal(v, final[k]) for k, v in model.state_dict().items())  # the model is left alone


def test_noise_is_reproducible_and_relative_noise_scales_with_the_weights():
    model = TinyNet()
    start = train(model)
    args = (model, start, model.state_dict(), loader(32), ["net.head"])
    first = module_criticality(*args, alphas=(1.0,), sigmas=(0.5,), draws=2, seed=4)
    again = module_criticality(*args, alphas=(1.0,), sigmas=(0.5,), draws=2, seed=4)
    other = module_criticality(*args, alphas=(1.0,), sigmas=(0.5,), draws=2, seed=5)
    assert first.modules["net.head"].loss == again.modules["net.head"].loss != other.modules["net.head"].loss
    tiny = module_criticality(*args, alphas=(1.0,), sigmas=(1e-6,), noise="relative", draws=1)
    assert tiny.modules["net.head"].loss[0][0] == pytest.approx(tiny.reference_loss, rel=1e-4)


def test_the_loss_criterion_bounds_the_loss():
    model = TinyNet()
    start = train(model, epochs=1)
    result = module_criticality(model, start, model.state_dict(), loader(32), ["net.head"], alphas=ALPHAS,
                                sigmas=(0.0,), criterion="loss", epsilon=0.0)
    head = result.modules["net.head"]
    assert result.criterion == "loss"
    assert head.passes == [[loss <= result.reference_loss for loss in row] for row in head.loss]


def test_bad_options_are_explained():
    model = TinyNet()
    with pytest.raises(ConfigError, match='Did you mean "relative"'):
        module_criticality(model, model, model, loader(8), ["net.head"], noise="relativ")
    with pytest.raises(ConfigError, match="no parameters"):
        module_criticality(model, model, model, loader(8), ["net.block1.2"])  # a ReLU
    with pytest.raises(ConfigError, match='Did you mean "net.block1"'):
        module_criticality(model, model, model, loader(8), ["net.blok1"])
    with pytest.raises(ConfigError, match="draws must be >= 1"):
        module_criticality(model, model, model, loader(8), ["net.head"], draws=0)
    regression = [(torch.randn(4, 1, 16, 16), torch.randn(4, 4))]
    with pytest.raises(ConfigError, match='criterion="loss"'):
        module_criticality(model, model, model, regression, ["net.head"], loss_fn=F.mse_loss)


def test_grids_must_be_finite_and_non_negative():
    assert check_grid((0, 0.5), "alphas") == [0.0, 0.5]
    for bad in ([], [-0.1], [math.inf]):
        with pytest.raises(ConfigError, match="finite values >= 0"):
            check_grid(bad, "sigmas")
