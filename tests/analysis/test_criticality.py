"""Module criticality (Chatterji et al. 2020): a hand-computed toy value, the ordering of a module whose rewinding
hurts over one whose rewinding does not, the minimum 0 for an untrained module, reproducible noise, clear errors."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analysis.criticality import check_grid, criticality_value, module_criticality, sigma_grid
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


def test_noise_is_reproducible_and_absolute():
    model = TinyNet()
    start = train(model)
    args = (model, start, model.state_dict(), loader(32), ["net.head"])
    first = module_criticality(*args, alphas=(1.0,), sigmas=(0.5,), draws=2, seed=4)
    again = module_criticality(*args, alphas=(1.0,), sigmas=(0.5,), draws=2, seed=4)
    other = module_criticality(*args, alphas=(1.0,), sigmas=(0.5,), draws=2, seed=5)
    assert first.modules["net.head"].loss == again.modules["net.head"].loss != other.modules["net.head"].loss
    tiny = module_criticality(*args, alphas=(1.0,), sigmas=(1e-6,), draws=1)
    assert tiny.modules["net.head"].loss[0][0] == pytest.approx(tiny.reference_loss, rel=1e-4)
    assert first.noise == "absolute"


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
        module_criticality(model, model, model, loader(8), ["net.head"], bound="relativ")
    with pytest.raises(ConfigError, match='Did you mean "bisect"'):
        module_criticality(model, model, model, loader(8), ["net.head"], search="bisec")
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


# ---------------------------------------------------------------------------------------- hand-computed toy
class TwoModules(nn.Module):
    """out = b(a(x)) with two scalar weights: the loss (w_b w_a - 1)^2 on x = 1, y = 1 is known by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(1, 1, bias=False)
        self.b = nn.Linear(1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


def two_modules(w_a: float, w_b: float) -> dict[str, torch.Tensor]:
    return {"a.weight": torch.tensor([[w_a]]), "b.weight": torch.tensor([[w_b]])}


ONE = [(torch.ones(1, 1), torch.ones(1, 1))]


def test_criticality_of_a_two_module_toy_matches_the_hand_computed_value():
    """thetaf: w_a = w_b = 1 (loss 0); theta0: w_a = 0 (||delta_a||^2 = 1), w_b = 3 (||delta_b||^2 = 4).

    Under absolute noise u ~ N(0, s^2) the expected loss is (1 - a)^2 + s^2 for module a and 4 (1 - a)^2 + s^2
    for module b. With epsilon = 0.5 (absolute bound) on the grid alpha in {0, .5, 1}, sigma in {.05, 1}:
    module a passes at (.5, .05) and (1, .05): min(.25 * 1 / .0025, 1 / .0025) = 100; module b passes only at
    (1, .05): 4 / .0025 = 1600. Every pass/fail decision is far from the bound, so the noise draws cannot
    change it (64 draws).
    """
    model = TwoModules()
    result = module_criticality(model, two_modules(0.0, 3.0), two_modules(1.0, 1.0), ONE, ["a", "b"],
                                alphas=(0.0, 0.5, 1.0), sigmas=(0.05, 1.0), epsilon=0.5, bound="absolute",
                                criterion="loss", loss_fn=F.mse_loss, draws=64)
    assert result.modules["a"].distance_sq == pytest.approx(1.0)
    assert result.modules["b"].distance_sq == pytest.approx(4.0)
    assert result.modules["a"].criticality == pytest.approx(100.0)
    assert result.modules["a"].argmin == (0.5, 0.05)
    assert result.modules["b"].criticality == pytest.approx(1600.0)
    assert result.modules["b"].argmin == (1.0, 0.05)
    assert result.reference_loss == 0.0


def test_bisection_finds_the_grid_minimum_with_fewer_evaluations():
    model = TwoModules()
    args = (model, two_modules(0.0, 3.0), two_modules(1.0, 1.0), ONE, ["a", "b"])
    options = dict(alphas=[k / 10 for k in range(11)], sigmas=sigma_grid(0.001, 1.0, 31), epsilon=0.5,
                   bound="absolute", criterion="loss", loss_fn=F.mse_loss, draws=8)
    grid = module_criticality(*args, search="grid", **options)
    fast = module_criticality(*args, search="bisect", **options)
    for name in ("a", "b"):
        assert fast.modules[name].criticality == pytest.approx(grid.modules[name].criticality)
        evaluated = sum(p is not None for row in fast.modules[name].passes for p in row)
        assert evaluated < 11 * 31 / 3
    # a fine log-spaced grid separates the modules: b (rewinding hurts more) is the more critical one
    assert fast.modules["b"].criticality > 2 * fast.modules["a"].criticality


def test_a_module_whose_rewinding_hurts_is_more_critical_than_one_whose_rewinding_does_not():
    """Module a moved only in a weight that sees a zero input: rewinding it fully changes nothing (mu = 0).
    Module b's rewinding breaks the fit: its criticality is positive and finite."""

    class Gate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(2, 1, bias=False)
            self.b = nn.Linear(1, 1, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x))

    final = {"a.weight": torch.tensor([[1.0, 0.0]]), "b.weight": torch.tensor([[1.0]])}
    start = {"a.weight": torch.tensor([[1.0, 5.0]]), "b.weight": torch.tensor([[-1.0]])}
    data = [(torch.tensor([[1.0, 0.0]]), torch.ones(1, 1))]
    result = module_criticality(Gate(), start, final, data, ["a", "b"], alphas=[k / 10 for k in range(11)],
                                sigmas=sigma_grid(0.001, 1.0, 25), epsilon=0.1, bound="absolute",
                                criterion="loss", loss_fn=F.mse_loss, draws=4, search="bisect")
    crit = result.criticality()
    assert crit["a"] == 0.0
    assert 0.0 < crit["b"] < math.inf
    assert result.modules["a"].argmin[0] == 0.0  # fully rewound


def test_batchnorm_statistics_are_re_estimated_at_every_point():
    """Stale running statistics (zeroed here) wreck the network; re-estimating them on training data restores it."""
    model = TinyNet()
    start = train(model)
    final = {k: v.clone() for k, v in model.state_dict().items()}
    for key in final:
        if key.endswith("running_mean"):
            final[key] = torch.full_like(final[key], 50.0)
    stale = module_criticality(model, start, final, loader(64), ["net.head"], alphas=(1.0,), sigmas=(0.0,),
                               draws=1)
    fresh = module_criticality(model, start, final, loader(64), ["net.head"], alphas=(1.0,), sigmas=(0.0,),
                               draws=1, bn_loader=loader(64))
    assert fresh.bn_recomputed and not stale.bn_recomputed
    assert fresh.reference_error < stale.reference_error


def test_the_absolute_bound_is_epsilon_itself():
    model = TwoModules()
    args = (model, two_modules(0.0, 3.0), two_modules(2.0, 1.0), ONE, ["a"])  # thetaf has loss 1
    options = dict(alphas=(1.0,), sigmas=(0.01,), criterion="loss", loss_fn=F.mse_loss, draws=1, epsilon=0.5)
    assert math.isinf(module_criticality(*args, bound="absolute", **options).modules["a"].criticality)
    assert math.isfinite(module_criticality(*args, bound="relative", **options).modules["a"].criticality)


def test_sigma_grids_are_log_spaced_and_checked():
    grid = sigma_grid(0.001, 1.0, 4)
    assert grid[0] == 0.001 and grid[-1] == 1.0
    assert grid[1] == pytest.approx(0.01) and grid[2] == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="0 < low < high"):
        sigma_grid(0.0, 1.0, 5)


def test_relative_noise_is_refused_with_the_reason():
    model = TinyNet()
    with pytest.raises(ConfigError, match="not comparable across modules"):
        module_criticality(model, model, model, loader(8), ["net.head"], noise="relative")
