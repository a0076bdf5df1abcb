"""The acceptance check: float32 input at N=10,000, D=4,096 agrees with float64 references within 1e-6.

Heavy (minutes on 2 cores, several GB): marked slow. The same agreement at small sizes is checked by
the fast tests of each module.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

import tests.similarity.float64_references as ref
from similarity import compare_rdms, linear_cka, procrustes_distance, rbf_cka, rdm, rsa_similarity

pytestmark = pytest.mark.slow

N, D, TOLERANCE = 10_000, 4_096, 1e-6


@pytest.fixture(scope="module")
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    """float32 post-ReLU-like features with an offset, and a noisy nonlinear read-out of them."""
    g = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(N, 64, generator=g) @ torch.randn(64, D, generator=g)
                   + 0.3 * torch.randn(N, D, generator=g) + 0.5)
    y = torch.relu(x @ (torch.randn(D, D, generator=g) / D**0.5) + torch.randn(N, D, generator=g))
    return x, y


def test_linear_cka_biased_and_debiased(pair):
    x, y = pair
    for debiased in (False, True):
        assert abs(linear_cka(x, y, debiased=debiased) - ref.linear_cka_large(x, y, debiased)) < TOLERANCE


def test_rbf_cka(pair):
    x, y = pair
    k, l_ = ref.centred_rbf_kernel_large(x), ref.centred_rbf_kernel_large(y)
    expected = float((k * l_).sum() / (k.norm() * l_.norm()))
    del k, l_
    assert abs(rbf_cka(x, y) - expected) < TOLERANCE


def test_rsa_with_spearman_pearson_and_kendall(pair):
    x, y = pair
    ref_x, ref_y = ref.correlation_rdm_large(x), ref.correlation_rdm_large(y)
    assert np.abs(rdm(x).numpy() - ref_x).max() < TOLERANCE
    assert abs(rsa_similarity(x, y) - float(stats.spearmanr(ref_x, ref_y).statistic)) < TOLERANCE
    ours_x, ours_y = rdm(x), rdm(y)
    assert abs(compare_rdms(ours_x, ours_y, "pearson") - float(stats.pearsonr(ref_x, ref_y).statistic)) < TOLERANCE
    pairs = ref_x.size * (ref_x.size - 1) / 2
    for v in (ref_x, ref_y):  # (almost) no tied distances, so scipy's tau-b equals tau-a to ~1e-12
        counts = np.unique(v, return_counts=True)[1]
        assert (counts * (counts - 1) / 2).sum() / pairs < 1e-12
    tau = float(stats.kendalltau(ref_x, ref_y).statistic)
    assert abs(compare_rdms(ours_x, ours_y, "kendall_tau_a") - tau) < TOLERANCE


def test_procrustes_distance(pair):
    x, y = pair
    assert abs(procrustes_distance(x, y) - ref.procrustes_distance_large(x, y)) < TOLERANCE
