"""Linear CKA and RSA of CUDA tensors equal the CPU float64 values: float64 centring and accumulation hold on
the GPU as on the CPU (the GPU branches of similarity/ are separate code: torch instead of numpy).

References are the textbook float64 forms of tests/similarity/float64_references.py, computed on the CPU
from the same float32 input. Tolerances are those similarity/ documents for float32 input (README):
CKA and RSA values within 1e-6 of float64, single RDM entries within rdm_error_bound(D). The inputs carry a
large common offset (1e5 on features of unit scale), which only float64 centring removes without loss:
measured on the CPU, column means summed in float32 put the feature-route CKA 2e-6 (pairwise summation) to
4e-2 (sequential) off, while float64 centring keeps it within 1e-8. float64 input on CUDA must match the
CPU to 1e-10 (only the kernels' summation order differs).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tests.similarity.float64_references as ref
from similarity import linear_cka, linear_cka_route, rdm, rdm_error_bound, rsa_similarity

pytestmark = pytest.mark.gpu

TOLERANCE = 1e-6
FLOAT64_TOLERANCE = 1e-10
OFFSET = 1e5


def pair(n: int, dx: int, dy: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 CPU features with a large offset, and a noisy nonlinear read-out of them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.relu(torch.randn(n, 32, generator=g) @ torch.randn(32, dx, generator=g)
                   + 0.3 * torch.randn(n, dx, generator=g)) + OFFSET
    y = torch.relu((x - OFFSET) @ (torch.randn(dx, dy, generator=g) / dx**0.5) + torch.randn(n, dy, generator=g))
    return x, y + OFFSET


# (N, Dx, Dy) for both routes of linear_cka: D x D feature-space products and N x N Gram-space products.
SHAPES = {"feature": (4096, 256, 384), "gram": (512, 3000, 2500)}


@pytest.mark.parametrize("route", sorted(SHAPES))
@pytest.mark.parametrize("debiased", [False, True], ids=["biased", "debiased"])
def test_linear_cka_of_cuda_float32_equals_the_cpu_float64_value(route, debiased):
    n, dx, dy = SHAPES[route]
    assert linear_cka_route(n, dx, dy) == route
    x, y = pair(n, dx, dy)
    expected = ref.feature_space_references(x, y)["linear_cka_debiased" if debiased else "linear_cka"]
    got = linear_cka(x.cuda(), y.cuda(), debiased=debiased)
    assert abs(got - expected) <= TOLERANCE, f"{got!r} vs float64 {expected!r}"
    assert 0.05 < expected < 0.999  # a value with digits to lose, not a trivial 0 or 1


@pytest.mark.parametrize("route", sorted(SHAPES))
def test_linear_cka_of_cuda_float64_equals_the_cpu_value(route):
    n, dx, dy = SHAPES[route]
    x, y = (t.double() for t in pair(n, dx, dy, seed=1))
    assert abs(linear_cka(x.cuda(), y.cuda()) - linear_cka(x, y)) <= FLOAT64_TOLERANCE


def test_rdm_entries_of_cuda_float32_are_within_the_guaranteed_bound():
    x, _ = pair(600, 512, 8)
    got = rdm(x.cuda(), "correlation")
    assert got.device.type == "cuda" and got.dtype == torch.float64
    error = float(np.abs(got.cpu().numpy() - ref.rdm(x, "correlation")).max())
    assert error <= rdm_error_bound(512), f"max error {error:.3g} > bound {rdm_error_bound(512):.3g}"


@pytest.mark.parametrize("compare", ["spearman", "pearson"])
def test_rsa_of_cuda_float32_equals_the_cpu_float64_value(compare):
    x, y = pair(600, 512, 384, seed=2)
    expected = ref.compare(ref.rdm(x, "correlation"), ref.rdm(y, "correlation"), compare)
    got = rsa_similarity(x.cuda(), y.cuda(), rdm_metric="correlation", compare=compare)
    assert abs(got - expected) <= TOLERANCE, f"{got!r} vs float64 {expected!r}"
    assert 0.05 < expected < 0.999


@pytest.mark.parametrize("compare", ["spearman", "pearson"])
def test_rsa_of_cuda_float64_equals_the_cpu_value(compare):
    x, y = (t.double() for t in pair(600, 512, 384, seed=3))
    cpu = rsa_similarity(x, y, compare=compare)
    assert abs(rsa_similarity(x.cuda(), y.cuda(), compare=compare) - cpu) <= FLOAT64_TOLERANCE
