"""RSA: RDMs as scipy defines them, comparisons as scipy/rsatoolbox compute them, MAML's 1 - rho."""

from __future__ import annotations

import numpy as np
import pytest
import rsatoolbox
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import tests.similarity.float64_references as ref
from similarity import UnknownNameError, compare_rdms, rdm, rdm_error_bound, rsa_dissimilarity, rsa_similarity
from similarity.rsa import (
    _descending_float32_keys,
    _indexed_key_slots,
    _ranks_of_float32_keys,
    average_ranks,
    kendall_tau_a,
    standardised,
)
from tests.machine import machine

FAST = settings(max_examples=20, deadline=None)


def float32_shortcut_ranks(t: torch.Tensor) -> tuple[np.ndarray, float]:
    """The float32 Spearman route on given similarities t: their keys into the sort's slots, then ranks."""
    packed, keys = _indexed_key_slots(t.numel())
    _descending_float32_keys(t.numpy(), out=keys)
    return _ranks_of_float32_keys(packed, keys)


def gaussian(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def related_pair(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = gaussian(n, 30, seed)
    return x, torch.tanh(x @ gaussian(30, 20, seed + 1)) + 0.5 * gaussian(n, 20, seed + 2)


@pytest.mark.parametrize("metric", ["correlation", "euclidean", "cosine"])
def test_rdm_is_scipy_pdist_in_condensed_order(metric):
    x = gaussian(70, 13, 0) + 1.0
    got = rdm(x, metric)
    assert got.dtype == torch.float64 and got.shape == (70 * 69 // 2,)
    np.testing.assert_allclose(got.numpy(), ref.rdm(x, metric), rtol=0, atol=1e-12)


@pytest.mark.parametrize("metric", ["correlation", "cosine"])
def test_rdm_of_float32_input_is_float64_and_within_the_guaranteed_bound(metric):
    x = gaussian(300, 64, 1) + 0.5
    got = rdm(x.float(), metric)
    error = float(np.abs(got.numpy() - ref.rdm(x.float(), metric)).max())
    assert got.dtype == torch.float64
    assert error <= rdm_error_bound(64), f"max error {error:.3g} > bound {rdm_error_bound(64):.3g} {machine()}"


def test_rdm_error_bound_is_first_order_d_plus_2_unit_roundoffs():
    assert rdm_error_bound(4096) == pytest.approx(4098 * 2.0**-24, rel=1e-3)
    assert rdm_error_bound(4096, torch.float64) < 1e-11
    assert rdm_error_bound(100) < rdm_error_bound(1000)


@FAST
@given(st.integers(3, 30), st.integers(2, 12), st.integers(0, 10_000),
       st.sampled_from(["correlation", "euclidean", "cosine"]),
       st.sampled_from(["spearman", "pearson", "kendall_tau_a"]))
def test_rsa_of_identical_inputs_is_one_and_its_dissimilarity_zero(n, d, seed, metric, compare):
    x = gaussian(n, d, seed) + 0.1
    expected = 1.0
    if compare == "kendall_tau_a":  # tau-a counts tied pairs in its denominator: 1 only without ties
        values = rdm(x, metric).numpy()  # (with d=2 every correlation is +-1, so ties are the rule)
        pairs = values.size * (values.size - 1) // 2
        expected = 1.0 - ref.tied_pairs(values) / pairs if pairs else 0.0
    assert rsa_similarity(x, x, rdm_metric=metric, compare=compare) == pytest.approx(expected, abs=1e-12)
    assert rsa_dissimilarity(x, x, rdm_metric=metric, compare=compare) == pytest.approx(1.0 - expected, abs=1e-12)


@pytest.mark.parametrize("compare", ["spearman", "pearson", "kendall_tau_a"])
@pytest.mark.parametrize("metric", ["correlation", "euclidean", "cosine"])
def test_rsa_matches_scipy_on_the_scipy_rdms(metric, compare):
    x, y = related_pair(40, seed=3)
    expected = ref.compare(ref.rdm(x, metric), ref.rdm(y, metric), compare)
    assert rsa_similarity(x, y, rdm_metric=metric, compare=compare) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("ours,theirs", [("spearman", "spearman"), ("pearson", "corr"), ("kendall_tau_a", "tau-a")])
def test_rsa_agrees_with_rsatoolbox_within_1e_8(ours, theirs):
    x, y = related_pair(150, seed=4)
    rdm_x = rsatoolbox.rdm.calc_rdm(rsatoolbox.data.Dataset(x.numpy()), method="correlation")
    rdm_y = rsatoolbox.rdm.calc_rdm(rsatoolbox.data.Dataset(y.numpy()), method="correlation")
    expected = float(rsatoolbox.rdm.compare(rdm_x, rdm_y, method=theirs).item())
    assert abs(rsa_similarity(x, y, compare=ours) - expected) < 1e-8


def test_rsa_dissimilarity_is_one_minus_the_similarity_of_the_maml_paper():
    x, y = related_pair(50, seed=6)
    rho = float(stats.spearmanr(ref.rdm(x, "correlation"), ref.rdm(y, "correlation")).statistic)
    assert rsa_dissimilarity(x, y) == pytest.approx(1.0 - rho, abs=1e-12)
    assert 0.0 < rsa_dissimilarity(x, y) < 1.0


@FAST
@given(st.lists(st.integers(-3, 3), min_size=2, max_size=60), st.integers(0, 10_000))
def test_average_ranks_and_kendall_tau_a_handle_ties_like_the_definitions(values, seed):
    a = np.array(values, dtype=np.float64)
    b = np.random.default_rng(seed).integers(-2, 3, size=a.size).astype(np.float64)
    np.testing.assert_array_equal(average_ranks(torch.from_numpy(a)).numpy(), stats.rankdata(a))
    assert kendall_tau_a(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(
        ref.kendall_tau_a_brute(a, b), abs=1e-12)


def test_average_ranks_are_exact_for_values_closer_than_the_packed_sort_resolves():
    base = np.random.default_rng(0).random(5_000)
    values = np.concatenate([base, base * (1 + 1e-13), base * (1 - 1e-15), -base, [0.0, -0.0]])
    np.testing.assert_array_equal(average_ranks(torch.from_numpy(values)).numpy(), stats.rankdata(values))


def test_spearman_of_float32_input_ranks_exactly_the_float64_values_rdm_returns():
    """float32 input takes a shortcut (ranks from packed float32 keys): it must equal scipy's Spearman
    of rdm()'s own float64 values, ties included (duplicate examples and constant rows make ties)."""
    x, y = related_pair(120, seed=7)
    x, y = x.float(), y.float()
    x[10:20] = x[0]  # duplicated examples: many exactly equal dissimilarities
    y[30:35] = y[1]
    x[40] = 2.0  # a constant example: dissimilarity exactly 1 to every other example
    expected = float(stats.spearmanr(rdm(x).numpy(), rdm(y).numpy()).statistic)
    assert rsa_similarity(x, y) == pytest.approx(expected, abs=1e-12)


@FAST
@given(st.lists(st.sampled_from([-1.0, -0.5, -0.0, 0.0, 0.25, 0.5, 1.0, 3e-5, -7e-3]), min_size=2, max_size=80))
def test_float32_rank_shortcut_matches_the_ranks_of_one_minus_the_values(values):
    t = torch.tensor(values, dtype=torch.float32)
    expected = standardised(torch.from_numpy(stats.rankdata(1.0 - t.double().numpy())))
    centred, norm = float32_shortcut_ranks(t)
    np.testing.assert_allclose(centred / norm if norm else centred, expected.numpy(), rtol=0, atol=1e-12)


@FAST
@given(st.lists(st.sampled_from([0.5, -0.25, 0.0, -0.0, 1e-20, 2e-20, -1e-20, 1e-12, 2.0**-28, -(2.0**-28),
                                 2.0**-29, 2.0**-30 + 2.0**-53, -(2.0**-30), 3e-9, 3.0000002e-9]),
                min_size=2, max_size=60))
def test_float32_rank_shortcut_is_exact_where_one_minus_t_rounds_in_float64(values):
    # Near t = 0 distinct float32 values can give the same float64 1 - t (1 - 1e-20 == 1 - 2e-20 == 1):
    # those must tie, as they do in rdm()'s values.
    t = torch.tensor(values, dtype=torch.float32)
    expected = standardised(torch.from_numpy(stats.rankdata(1.0 - t.double().numpy())))
    centred, norm = float32_shortcut_ranks(t)
    np.testing.assert_allclose(centred / norm if norm else centred, expected.numpy(), rtol=0, atol=1e-12)


def test_large_n_builds_both_sides_at_once_with_the_one_thread_value_and_restores_the_blas_threads():
    """From 500 examples the two RDMs are built and ranked in two threads, one BLAS thread each: the value
    must be exactly the one-thread value, ranks and ties exactly those of rdm() at one thread (BLAS may
    round float32 products differently with another thread count), and the BLAS limit must be given back."""
    from threadpoolctl import threadpool_info

    x, y = (t.float() for t in related_pair(600, seed=3))
    before = [lib["num_threads"] for lib in threadpool_info()]
    concurrent = rsa_similarity(x, y)
    assert [lib["num_threads"] for lib in threadpool_info()] == before
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one_after_the_other = rsa_similarity(x, y)
        expected = float(stats.spearmanr(rdm(x).numpy(), rdm(y).numpy()).statistic)
    finally:
        torch.set_num_threads(threads)
    assert concurrent == one_after_the_other, machine()
    assert concurrent == pytest.approx(expected, abs=1e-12), machine()


def test_unknown_metric_or_comparison_suggests_the_right_name():
    x = gaussian(5, 3, 0)
    with pytest.raises(UnknownNameError, match="Did you mean 'correlation'"):
        rdm(x, "corelation")
    with pytest.raises(UnknownNameError, match="Did you mean 'spearman'"):
        rsa_similarity(x, x, compare="spearmann")
    with pytest.raises(ValueError, match="same N"):
        compare_rdms(rdm(x), rdm(x[:4]))
