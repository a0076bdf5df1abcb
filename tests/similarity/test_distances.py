"""Procrustes distance between representations and l2 distance between weights."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tests.similarity.float64_references as ref
from similarity import SimilarityInputError, UnknownNameError, procrustes_distance, weight_l2_distance
from tests.machine import machine

FAST = settings(max_examples=20, deadline=None)


def gaussian(n: int, d: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def random_orthogonal(d: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(gaussian(d, d, seed))
    return q * torch.sign(torch.diagonal(r))


@pytest.mark.parametrize("n,dx,dy", [(50, 8, 12), (20, 40, 30), (15, 10, 60)])
def test_procrustes_distance_is_the_minimum_of_the_explicit_procrustes_problem(n, dx, dy):
    x = gaussian(n, dx, n)
    y = torch.tanh(x @ gaussian(dx, dy, n + 1)) + 0.3 * gaussian(n, dy, n + 2)
    assert procrustes_distance(x, y) == pytest.approx(ref.procrustes_distance(x, y), abs=1e-12)


@FAST
@given(st.integers(4, 30), st.integers(1, 12), st.floats(0.01, 100.0), st.integers(0, 10_000))
def test_procrustes_distance_ignores_translation_scaling_and_rotation(n, d, scale, seed):
    x = gaussian(n, d, seed)
    moved = scale * x @ random_orthogonal(d, seed + 1) + 5.0
    assert procrustes_distance(x, moved) == pytest.approx(0.0, abs=1e-9)
    y = gaussian(n, d, seed + 2)
    assert procrustes_distance(moved, y) == pytest.approx(procrustes_distance(x, y), abs=1e-9)
    assert procrustes_distance(x, y) == pytest.approx(procrustes_distance(y, x), abs=1e-12)
    assert 0.0 <= procrustes_distance(x, y) <= 2.0


def test_procrustes_from_float32_is_within_1e_6_of_float64():
    x = gaussian(400, 64, 0)
    y = torch.relu(x @ gaussian(64, 48, 1))
    error = abs(procrustes_distance(x.float(), y.float()) - ref.procrustes_distance(x.float(), y.float()))
    assert error < 1e-6, machine()


def test_procrustes_of_a_constant_representation_is_undefined():
    assert math.isnan(procrustes_distance(gaussian(10, 3, 0), torch.zeros(10, 3)))


def test_weight_l2_distance_sums_over_floating_tensors_only():
    a = {"w": torch.ones(2, 3), "b": torch.zeros(3), "bn.num_batches_tracked": torch.tensor(5)}
    b = {"w": torch.zeros(2, 3), "b": torch.full((3,), 2.0), "bn.num_batches_tracked": torch.tensor(9)}
    assert weight_l2_distance(a, b) == pytest.approx(math.sqrt(6 * 1 + 3 * 4))
    assert weight_l2_distance(a, b, keys=["b"]) == pytest.approx(math.sqrt(12))
    assert weight_l2_distance(a, a) == 0.0


def test_weight_l2_distance_of_real_modules_matches_flattened_parameters():
    torch.manual_seed(0)
    m1 = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    m2 = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    expected = torch.cat([(p.double() - q.double()).flatten() for p, q in
                          zip(m1.state_dict().values(), m2.state_dict().values()) if p.is_floating_point()]).norm()
    assert weight_l2_distance(m1.state_dict(), m2.state_dict()) == pytest.approx(float(expected), rel=1e-12)


def test_weight_l2_distance_errors_say_which_keys_and_how_to_fix():
    a = {"layer.weight": torch.ones(2), "head.weight": torch.ones(2)}
    with pytest.raises(UnknownNameError, match="only in state_a.*head.weight.*keys="):
        weight_l2_distance(a, {"layer.weight": torch.ones(2)})
    with pytest.raises(UnknownNameError, match="Did you mean 'layer.weight'"):
        weight_l2_distance(a, a, keys=["layer.weigth"])
    with pytest.raises(SimilarityInputError, match="shape"):
        weight_l2_distance(a, {"layer.weight": torch.ones(3), "head.weight": torch.ones(2)})
