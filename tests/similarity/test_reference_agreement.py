"""The acceptance check: from float32 input at N=10,000, D=4,096 every similarity value (CKA, RSA,
Procrustes) agrees with its float64 reference within 1e-6, and every RDM entry within its guaranteed
bound rdm_error_bound(D) (float32 dot products: the entry-wise error depends on the BLAS kernel).

Heavy (minutes on 2 cores, a few GB): marked slow. The float64 references are built once per module
from the fewest products (three D x D products for linear CKA and Procrustes, one N x N Gram matrix
per side for the RDMs and the RBF kernels), and our two RDMs are computed once for the comparisons.
The same agreement at small sizes is checked by the fast tests of each module.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

import tests.similarity.float64_references as ref
from similarity import compare_rdms, linear_cka, procrustes_distance, rbf_cka, rdm, rdm_error_bound, rsa_similarity
from tests.machine import machine

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


@pytest.fixture(scope="module")
def feature_reference(pair) -> dict[str, float]:
    return ref.feature_space_references(*pair)


@pytest.fixture(scope="module")
def gram_reference(pair) -> dict:
    """Both float64 correlation RDMs and the float64 RBF CKA value (the N x N kernels are dropped)."""
    x, y = pair
    rdm_x, k = ref.gram_space_references(x)
    rdm_y, l_ = ref.gram_space_references(y)
    rbf = float(np.vdot(k, l_) / (np.linalg.norm(k) * np.linalg.norm(l_)))
    del k, l_
    return {"rdm_x": rdm_x, "rdm_y": rdm_y, "rbf_cka": rbf}


@pytest.fixture(scope="module")
def our_rdms(pair) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = pair
    return rdm(x), rdm(y)


def test_linear_cka_biased_and_debiased(pair, feature_reference):
    x, y = pair
    assert abs(linear_cka(x, y) - feature_reference["linear_cka"]) < TOLERANCE, machine()
    assert abs(linear_cka(x, y, debiased=True) - feature_reference["linear_cka_debiased"]) < TOLERANCE, machine()


def test_procrustes_distance(pair, feature_reference):
    assert abs(procrustes_distance(*pair) - feature_reference["procrustes_distance"]) < TOLERANCE, machine()


def test_rbf_cka(pair, gram_reference):
    assert abs(rbf_cka(*pair) - gram_reference["rbf_cka"]) < TOLERANCE, machine()


def test_rdms_within_their_bound_and_spearman_rsa_within_1e6(pair, gram_reference, our_rdms):
    bound = rdm_error_bound(D)
    for ours, reference in zip(our_rdms, (gram_reference["rdm_x"], gram_reference["rdm_y"])):
        error = float(np.abs(ours.numpy() - reference).max())
        assert error <= bound, f"max |RDM - float64| = {error:.3g} > bound {bound:.3g} {machine()}"
    expected = float(stats.spearmanr(gram_reference["rdm_x"], gram_reference["rdm_y"]).statistic)
    error = abs(rsa_similarity(*pair) - expected)
    assert error < TOLERANCE, f"|RSA - float64 RSA| = {error:.3g} {machine()}"


def test_pearson_rsa(gram_reference, our_rdms):
    expected = float(stats.pearsonr(gram_reference["rdm_x"], gram_reference["rdm_y"]).statistic)
    assert abs(compare_rdms(*our_rdms, "pearson") - expected) < TOLERANCE, machine()


def test_kendall_tau_a_rsa(gram_reference, our_rdms):
    ref_x, ref_y = gram_reference["rdm_x"], gram_reference["rdm_y"]
    pairs = ref_x.size * (ref_x.size - 1) / 2
    for v in (ref_x, ref_y):  # (almost) no tied distances, so scipy's tau-b equals tau-a to ~1e-12
        assert ref.tied_pairs(v) / pairs < 1e-12
    tau = float(stats.kendalltau(ref_x, ref_y).statistic)
    assert abs(compare_rdms(*our_rdms, "kendall_tau_a") - tau) < TOLERANCE
