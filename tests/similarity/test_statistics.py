"""Bootstrap intervals and permutation tests for any measure."""

from __future__ import annotations

import math

import pytest
import torch

from similarity import SimilarityInputError, bootstrap_ci, get_measure, linear_cka, permutation_test
from similarity.registry import Measure


def related_pair(n: int, seed: int, noise: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g, dtype=torch.float64)
    return x, x @ torch.randn(6, 4, generator=g, dtype=torch.float64) + noise * torch.randn(
        n, 4, generator=g, dtype=torch.float64)


def independent_pair(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 6, generator=g, dtype=torch.float64),
            torch.randn(n, 4, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("name", ["linear_cka", "linear_cka_debiased"])
def test_the_linear_cka_fast_path_equals_resampling_the_tensors(name):
    x, y = related_pair(40, seed=0)
    fast = bootstrap_ci(name, x, y, n_boot=30, seed=3)
    fn = get_measure(name)
    looped = bootstrap_ci(lambda a, b: fn(a, b), x, y, n_boot=30, seed=3)  # a plain callable: no fast path
    assert fast == pytest.approx(looped, abs=1e-10)
    assert permutation_test(name, x, y, n_perm=30, seed=1) == permutation_test(
        lambda a, b: fn(a, b), x, y, n_perm=30, seed=1)


def test_bootstrap_interval_is_ordered_reproducible_and_narrows_with_more_examples():
    x, y = related_pair(60, seed=1)
    estimate, low, high = bootstrap_ci("linear_cka", x, y, n_boot=200, seed=0)
    assert estimate == linear_cka(x, y)
    assert low < high
    assert bootstrap_ci("linear_cka", x, y, n_boot=200, seed=0) == (estimate, low, high)
    x_big, y_big = related_pair(600, seed=1)
    _, low_big, high_big = bootstrap_ci("linear_cka", x_big, y_big, n_boot=200, seed=0)
    assert high_big - low_big < high - low
    _, low_90, high_90 = bootstrap_ci("linear_cka", x, y, n_boot=200, confidence=0.9, seed=0)
    assert low <= low_90 and high_90 <= high


def test_permutation_test_separates_related_from_independent_representations():
    x, y = related_pair(50, seed=2)
    assert permutation_test("linear_cka", x, y, n_perm=99) == pytest.approx(0.01)  # nothing beats the truth
    assert permutation_test("rsa_spearman", x, y, n_perm=19) == pytest.approx(0.05)
    p_values = [permutation_test("linear_cka", *independent_pair(30, seed), n_perm=49) for seed in range(8)]
    assert sum(p > 0.05 for p in p_values) >= 6


def test_distances_are_tested_in_the_right_direction():
    x, y = related_pair(40, seed=4, noise=0.3)
    assert permutation_test("procrustes_distance", x, y, n_perm=19) == pytest.approx(0.05)
    as_similarity = Measure("flipped", get_measure("procrustes_distance").fn, "similarity", "wrong direction")
    assert permutation_test(as_similarity, x, y, n_perm=19) == pytest.approx(1.0)


def test_undefined_draws_and_bad_arguments():
    x, y = related_pair(10, seed=5)
    constant = torch.ones(10, 2)
    estimate, low, high = bootstrap_ci("linear_cka", x, constant, n_boot=5)
    assert math.isnan(estimate) and math.isnan(low) and math.isnan(high)
    with pytest.raises(SimilarityInputError, match="undefined"):
        permutation_test("linear_cka", x, constant, n_perm=5)
    with pytest.raises(SimilarityInputError, match="n_boot must be >= 1"):
        bootstrap_ci("linear_cka", x, y, n_boot=0)
    with pytest.raises(SimilarityInputError, match="confidence must lie in"):
        bootstrap_ci("linear_cka", x, y, confidence=95)
    with pytest.raises(SimilarityInputError, match="n_perm must be >= 1"):
        permutation_test("linear_cka", x, y, n_perm=0)
    with pytest.raises(KeyError, match="Did you mean"):
        bootstrap_ci("linear_ckaa", x, y)
