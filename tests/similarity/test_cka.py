"""Linear, RBF and minibatch CKA: the defining properties, textbook references, and clear errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tests.similarity.float64_references as ref
from similarity import SimilarityInputError, linear_cka, minibatch_cka, rbf_cka
from similarity._blocks import (
    cross_feature_sq,
    gram,
    gram_inner_products,
    gram_space_sums,
    self_feature_sq,
    self_gram_sq,
)
from tests.machine import machine

FAST = settings(max_examples=20, deadline=None)


def gaussian(n: int, d: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def related_pair(n: int, dx: int, dy: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x with an offset (like post-ReLU features) and y a noisy linear read-out of x."""
    x = gaussian(n, dx, seed) + 3.0
    y = x @ gaussian(dx, dy, seed + 1) + 2.0 * gaussian(n, dy, seed + 2)
    return x, y


def random_orthogonal(d: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(gaussian(d, d, seed))
    return q * torch.sign(torch.diagonal(r))


shapes = st.tuples(st.integers(6, 40), st.integers(1, 30), st.integers(1, 30), st.integers(0, 10_000))


# --- defining properties -------------------------------------------------------------------------

@FAST
@given(shapes, st.booleans())
def test_cka_of_a_representation_with_itself_is_one(shape, debiased):
    n, dx, _, seed = shape
    x = gaussian(n, dx, seed)
    assert linear_cka(x, x, debiased=debiased) == pytest.approx(1.0, abs=1e-12)
    assert rbf_cka(x, x, debiased=debiased) == pytest.approx(1.0, abs=1e-12)


@FAST
@given(shapes, st.booleans())
def test_cka_is_symmetric(shape, debiased):
    n, dx, dy, seed = shape
    x, y = related_pair(n, dx, dy, seed)
    assert linear_cka(x, y, debiased=debiased) == pytest.approx(linear_cka(y, x, debiased=debiased), abs=1e-12)
    assert rbf_cka(x, y, debiased=debiased) == pytest.approx(rbf_cka(y, x, debiased=debiased), abs=1e-12)


@FAST
@given(shapes, st.floats(0.01, 100.0), st.booleans())
def test_cka_ignores_orthogonal_transforms_and_isotropic_scaling(shape, scale, debiased):
    n, dx, dy, seed = shape
    x, y = related_pair(n, dx, dy, seed)
    moved = scale * x @ random_orthogonal(dx, seed + 7)
    assert linear_cka(moved, y, debiased=debiased) == pytest.approx(linear_cka(x, y, debiased=debiased), abs=1e-9)
    assert rbf_cka(moved, y, debiased=debiased) == pytest.approx(rbf_cka(x, y, debiased=debiased), abs=1e-9)


def test_linear_cka_is_not_invariant_to_general_invertible_linear_maps():
    x, y = related_pair(200, 20, 20, seed=3)
    stretch = torch.diag(torch.logspace(0, 2, 20, dtype=torch.float64))  # invertible, not orthogonal
    before, after = linear_cka(x, y), linear_cka(x @ stretch, y)
    assert abs(after - before) > 0.05


def test_debiased_cka_of_independent_data_is_near_zero_while_biased_cka_is_not():
    biased, debiased = [], []
    for seed in range(10):
        x, y = gaussian(30, 200, seed), gaussian(30, 200, 100 + seed)
        biased.append(linear_cka(x, y))
        debiased.append(linear_cka(x, y, debiased=True))
    assert min(biased) > 0.7  # small N, large D: the biased estimator sees structure that is not there
    assert abs(sum(debiased) / len(debiased)) < 0.05
    assert max(abs(v) for v in debiased) < 0.2
    assert min(debiased) < 0  # negative estimates are returned, not clamped to 0


# --- agreement with textbook float64 formulas ---------------------------------------------------

@pytest.mark.parametrize("n,dx,dy", [(60, 5, 8), (40, 100, 70), (30, 10, 300)])
@pytest.mark.parametrize("debiased", [False, True])
def test_linear_cka_matches_the_textbook_hsic_formulas(n, dx, dy, debiased):
    x, y = related_pair(n, dx, dy, seed=n + dx)
    assert linear_cka(x, y, debiased=debiased) == pytest.approx(ref.linear_cka(x, y, debiased), abs=1e-12)


@pytest.mark.parametrize("factor", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("debiased", [False, True])
def test_rbf_cka_matches_the_textbook_formula_with_the_median_bandwidth(factor, debiased):
    x, y = related_pair(50, 12, 9, seed=5)
    expected = ref.rbf_cka(x, y, factor, debiased)
    assert rbf_cka(x, y, bandwidth_factor=factor, debiased=debiased) == pytest.approx(expected, abs=1e-12)


def test_float32_input_agrees_with_the_float64_reference_within_1e_6():
    x, y = related_pair(500, 300, 200, seed=11)
    x32, y32 = x.float(), y.float()
    for debiased in (False, True):
        assert abs(linear_cka(x32, y32, debiased=debiased) - ref.linear_cka(x32, y32, debiased)) < 1e-6, machine()
        assert abs(rbf_cka(x32, y32, debiased=debiased) - ref.rbf_cka(x32, y32, 1.0, debiased)) < 1e-6, machine()


def test_feature_space_and_gram_space_routes_give_the_same_sums():
    x, y = related_pair(50, 30, 20, seed=2)
    x, y = x - x.mean(0), y - y.mean(0)
    cross, xx, yy = gram_space_sums(x, y, block=7)  # many blocks, uneven edges
    assert cross == pytest.approx(cross_feature_sq(x, y, block=4), rel=1e-12)
    assert xx == pytest.approx(self_feature_sq(x, block=4), rel=1e-12)
    assert yy == pytest.approx(self_gram_sq(y, block=9), rel=1e-12)
    assert xx == pytest.approx(float((x.T @ x).square().sum()), rel=1e-12)


def test_blocked_gram_and_all_pairs_inner_products_equal_the_plain_products():
    x, y = related_pair(60, 30, 20, seed=5)
    kx, ky = gram(x.float(), block=16), gram(y.float(), block=25)  # several blocks, uneven edges
    torch.testing.assert_close(kx, x.float() @ x.float().T, rtol=1e-5, atol=1e-3)
    products = gram_inner_products([kx, ky], block_bytes=8 * 2 * 60 * 7)  # 7 rows per block
    for i, a in enumerate((kx, ky)):
        for j, b in enumerate((kx, ky)):
            assert float(products[i, j]) == pytest.approx(float((a.double() * b.double()).sum()), rel=1e-12)


def test_inputs_are_flattened_per_example():
    x = gaussian(40, 2 * 3 * 4, 0).reshape(40, 2, 3, 4)
    y = gaussian(40, 6, 1)
    assert linear_cka(x, y) == linear_cka(x.reshape(40, -1), y)


def test_a_constant_representation_has_undefined_cka():
    x = gaussian(20, 5, 0)
    assert math.isnan(linear_cka(x, torch.ones(20, 3, dtype=torch.float64)))


# --- minibatch CKA ------------------------------------------------------------------------------

def test_minibatch_cka_matches_nguyen_et_al_and_differs_from_full_data_cka():
    x, y = related_pair(120, 16, 10, seed=9)
    xs, ys = list(x.split(30)), list(y.split(30))
    value = minibatch_cka(iter(xs), iter(ys))
    assert value == pytest.approx(ref.minibatch_cka(xs, ys), abs=1e-12)
    assert value != pytest.approx(linear_cka(x, y), abs=1e-3)


def test_minibatch_cka_rejects_unpaired_batches():
    xs = [gaussian(8, 3, s) for s in range(3)]
    with pytest.raises(SimilarityInputError, match="same length|equally long"):
        minibatch_cka(xs, xs[:2])
    with pytest.raises(SimilarityInputError, match="more batches than xs"):
        minibatch_cka(xs[:2], xs)
    with pytest.raises(SimilarityInputError, match="no batches"):
        minibatch_cka([], [])


# --- errors that say what to do -------------------------------------------------------------------

def test_errors_name_the_problem_and_the_fix():
    x = gaussian(10, 3, 0)
    with pytest.raises(SimilarityInputError, match="10 examples but y has 9.*same examples"):
        linear_cka(x, x[:9])
    with pytest.raises(SimilarityInputError, match="at least 4 examples"):
        linear_cka(x[:3], x[:3], debiased=True)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(SimilarityInputError, match="NaN or infinite.*remove"):
        linear_cka(bad, x)
    with pytest.raises(SimilarityInputError, match="bandwidth_factor must be positive"):
        rbf_cka(x, x, bandwidth_factor=0.0)
    with pytest.raises(SimilarityInputError, match="torch.Tensor"):
        linear_cka(x.numpy(), x)
