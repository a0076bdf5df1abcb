"""The product helper: numpy's BLAS on the CPU, torch elsewhere; the same product either way."""

from __future__ import annotations

import pytest
import torch

from similarity._matmul import mm, singular_values
from tests.machine import machine


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_products_equal_torch_matmul_for_views_and_transposes(dtype):
    """numpy's BLAS and torch's may sum in other orders: each entry is within twice the worst-case
    dot-product rounding gamma_k |a_i| |b_j| of the other, whatever the kernels."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(70, 50, generator=g, dtype=dtype)
    b = torch.randn(90, 50, generator=g, dtype=dtype)
    for left, right in ((a, b.T), (a[10:40], b[20:60].T), (a[:, 3:20].T, a[:, 7:9])):
        got = mm(left, right)
        assert got.dtype == dtype and got.shape == (left.shape[0], right.shape[1])
        k, unit = left.shape[1], torch.finfo(dtype).eps / 2
        bound = 2 * k * unit / (1 - k * unit) * torch.outer(left.norm(dim=1), right.norm(dim=0))
        excess = ((got - left @ right).abs() - bound).max().item()
        assert excess <= 0, f"a product differs by more than its rounding bound {machine()}"


def test_other_dtypes_and_tensors_needing_grad_go_through_torch():
    a = torch.ones(3, 4, dtype=torch.bfloat16)
    assert mm(a, a.T).dtype == torch.bfloat16
    w = torch.ones(4, 2, requires_grad=True)
    out = mm(torch.ones(3, 4), w)
    out.sum().backward()
    assert w.grad is not None and torch.equal(w.grad, torch.full((4, 2), 3.0))


def test_singular_values_equal_torch_svdvals():
    m = torch.randn(40, 25, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(singular_values(m), torch.linalg.svdvals(m), rtol=1e-12, atol=1e-12)
