"""The product helper: numpy's BLAS on the CPU, torch elsewhere; the same product either way."""

from __future__ import annotations

import pytest
import torch

from similarity._matmul import mm, singular_values


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_cpu_products_equal_torch_matmul_for_views_and_transposes(dtype, tolerance):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(70, 50, generator=g, dtype=dtype)
    b = torch.randn(90, 50, generator=g, dtype=dtype)
    for left, right in ((a, b.T), (a[10:40], b[20:60].T), (a[:, 3:20].T, a[:, 7:9])):
        got = mm(left, right)
        assert got.dtype == dtype and got.shape == (left.shape[0], right.shape[1])
        torch.testing.assert_close(got, left @ right, rtol=tolerance, atol=tolerance)


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
