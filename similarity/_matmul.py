"""Matrix products and singular values on the fastest backend: numpy's BLAS/LAPACK on the CPU, torch elsewhere.

On the CPU torch multiplies through MKL, numpy through OpenBLAS. On this project's CI machine (2-core
AMD EPYC, torch 2.14.1, numpy 2.4 with scipy-openblas 0.3.31) OpenBLAS ran float32 and float64 GEMM of
the shapes used here about 1.9x faster than torch.mm (MKL does not use its best kernels on AMD CPUs).
Both compute the same product in the same dtype; only the summation order within a dot product
differs. Likewise numpy's LAPACK took 0.5-0.7x the time of torch.linalg.svdvals for a 2,048^2 float64
matrix. Off the CPU, for other dtypes or for tensors that need gradients, torch is used.
numpy's BLAS is held to torch.get_num_threads() threads, so torch.set_num_threads keeps its meaning.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

_NUMPY_DTYPES = (torch.float32, torch.float64)
_blas = None  # threadpoolctl controller of numpy's BLAS, found on first use (False: not available)


def _numpy_blas():
    global _blas
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController

            controller = ThreadpoolController().select(user_api="blas")
            _blas = controller if controller.lib_controllers else False
        except Exception:  # noqa: BLE001 - thread control is an optimisation, never a failure
            _blas = False
    return _blas


_held = False  # True while one_blas_thread() holds numpy's BLAS to one thread for concurrent workers


@contextmanager
def numpy_blas_threads():
    """Hold numpy's BLAS/LAPACK to torch.get_num_threads() threads inside the block (no-op without
    threadpoolctl, or while one_blas_thread() already holds the limit)."""
    blas = _numpy_blas()
    if not blas or _held:
        yield
        return
    with blas.limit(limits=torch.get_num_threads()):
        yield


@contextmanager
def one_blas_thread():
    """One BLAS thread per caller inside the block, for products run concurrently from worker threads.

    Enter it from the thread that starts and joins the workers: the limit is process-wide, so nested
    per-product limits (numpy_blas_threads) from several threads at once would undo each other.
    """
    global _held
    blas = _numpy_blas()
    if not blas or _held:
        yield
        return
    with blas.limit(limits=1):
        _held = True
        try:
            yield
        finally:
            _held = False


def mm(a: Tensor, b: Tensor) -> Tensor:
    """a @ b for 2-D tensors (views and transposes welcome); CPU float32/float64 products run in numpy's BLAS."""
    if a.device.type != "cpu" or a.dtype not in _NUMPY_DTYPES or b.dtype != a.dtype or a.requires_grad \
            or b.requires_grad:
        return a @ b
    with numpy_blas_threads():
        return torch.from_numpy(np.matmul(a.numpy(), b.numpy()))


def singular_values(m: Tensor) -> Tensor:
    """Singular values of a 2-D float64 matrix; on the CPU through numpy's LAPACK (faster than torch's here)."""
    if m.device.type != "cpu" or m.dtype != torch.float64 or m.requires_grad:
        return torch.linalg.svdvals(m)
    with numpy_blas_threads():
        return torch.from_numpy(np.linalg.svd(m.numpy(), compute_uv=False))
