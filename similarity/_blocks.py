"""Blocked matrix products reduced to float64 scalars: the engine behind the CKA family.

Linear CKA needs three numbers, ||Xc^T Yc||_F^2, ||Xc^T Xc||_F^2 and ||Yc^T Yc||_F^2 (Xc, Yc centred).
Each can be computed in *feature space* (D x D products, cost ~N*D^2) or in *Gram space*
(<Xc Xc^T, Yc Yc^T>, cost ~N^2*D); the cheaper one is picked from the shapes. Both are computed in
blocks: every block product runs in the compute dtype (float32 at float32 speed) and is reduced at
once into a float64 sum, so no N x N or D x D matrix is ever held whole and float32 never
accumulates more than one block. Symmetric products (X^T X, X X^T) compute only the upper triangle
of blocks, which saves about a third of the work of linear CKA.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from similarity._matmul import mm

# Block edge for products: large enough for BLAS to run at full speed, small enough that a block
# (and its float64 reduction) stays a few tens of MB.
BLOCK = 2048


def _cpu_view(a: Tensor) -> np.ndarray | None:
    """A numpy view of a CPU float32/float64 tensor (shared memory), else None."""
    if a.device.type == "cpu" and a.dtype in (torch.float32, torch.float64) and not a.requires_grad:
        return a.numpy()
    return None


def sq64(a: Tensor) -> float:
    """Sum of squares of a block, accumulated in float64.

    On the CPU numpy's einsum does the float64 accumulation in one single-threaded pass without a
    float64 copy (several times faster than torch's threaded norm when other jobs share the cores).
    """
    view = _cpu_view(a)
    if view is not None:
        flat = view.reshape(-1)
        return float(np.einsum("i,i->", flat, flat, dtype=np.float64))
    return float(torch.linalg.vector_norm(a, dtype=torch.float64)) ** 2


def dot64(a: Tensor, b: Tensor) -> float:
    """Frobenius inner product of two blocks, accumulated in float64."""
    va, vb = _cpu_view(a), _cpu_view(b)
    if va is not None and vb is not None:
        return float(np.einsum("i,i->", va.reshape(-1), vb.reshape(-1), dtype=np.float64))
    if a.dtype == torch.float64:
        return float(torch.dot(a.reshape(-1), b.reshape(-1)))
    return float(torch.sum(a * b, dtype=torch.float64))


def edges(n: int, block: int) -> list[tuple[int, int]]:
    """Near-equal consecutive [start, stop) ranges of at most `block` covering range(n)."""
    parts = max(1, -(-n // block))
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def self_feature_sq(xc: Tensor, block: int = BLOCK) -> float:
    """||Xc^T Xc||_F^2 from D x D blocks (upper triangle only)."""
    spans = edges(xc.shape[1], block)
    total = 0.0
    for i, (a0, a1) in enumerate(spans):
        left = xc[:, a0:a1].T
        for b0, b1 in spans[i:]:
            total += (1.0 if b0 == a0 else 2.0) * sq64(mm(left, xc[:, b0:b1]))
    return total


def cross_feature_sq(xc: Tensor, yc: Tensor, block: int = BLOCK) -> float:
    """||Xc^T Yc||_F^2 from Dx x Dy blocks."""
    total = 0.0
    for a0, a1 in edges(xc.shape[1], block):
        left = xc[:, a0:a1].T
        for b0, b1 in edges(yc.shape[1], block):
            total += sq64(mm(left, yc[:, b0:b1]))
    return total


def gram_space_sums(xc: Tensor, yc: Tensor, block: int = BLOCK) -> tuple[float, float, float]:
    """(<K, L>, ||K||^2, ||L||^2) for K = Xc Xc^T, L = Yc Yc^T from N x N blocks (upper triangle only)."""
    spans = edges(xc.shape[0], block)
    xy = xx = yy = 0.0
    for i, (a0, a1) in enumerate(spans):
        xa, ya = xc[a0:a1], yc[a0:a1]
        for b0, b1 in spans[i:]:
            weight = 1.0 if b0 == a0 else 2.0
            k, l_ = mm(xa, xc[b0:b1].T), mm(ya, yc[b0:b1].T)
            xy += weight * dot64(k, l_)
            xx += weight * sq64(k)
            yy += weight * sq64(l_)
    return xy, xx, yy


def self_gram_sq(xc: Tensor, block: int = BLOCK) -> float:
    """||Xc Xc^T||_F^2 from N x N blocks (upper triangle only)."""
    spans = edges(xc.shape[0], block)
    total = 0.0
    for i, (a0, a1) in enumerate(spans):
        xa = xc[a0:a1]
        for b0, b1 in spans[i:]:
            total += (1.0 if b0 == a0 else 2.0) * sq64(mm(xa, xc[b0:b1].T))
    return total


def feature_cost(n: int, dx: int, dy: int) -> float:
    """Multiply-adds of the feature-space route for all three sums."""
    return n * (dx * dx / 2 + dy * dy / 2 + dx * dy)


def gram_cost(n: int, dx: int, dy: int) -> float:
    """Multiply-adds of the Gram-space route for all three sums."""
    return n * n * (dx + dy) / 2


def linear_sums(xc: Tensor, yc: Tensor) -> tuple[float, float, float]:
    """(||Xc^T Yc||^2, ||Xc^T Xc||^2, ||Yc^T Yc||^2) in float64 by the cheaper route for these shapes."""
    n, dx, dy = xc.shape[0], xc.shape[1], yc.shape[1]
    if feature_cost(n, dx, dy) <= gram_cost(n, dx, dy):
        return cross_feature_sq(xc, yc), self_feature_sq(xc), self_feature_sq(yc)
    return gram_space_sums(xc, yc)


def self_sq(xc: Tensor) -> float:
    """||Xc^T Xc||_F^2 = ||Xc Xc^T||_F^2 by the cheaper route (D x D when D <= N, else N x N)."""
    return self_feature_sq(xc) if xc.shape[1] <= xc.shape[0] else self_gram_sq(xc)


def gram(xc: Tensor, block: int = BLOCK) -> Tensor:
    """The full N x N Gram matrix Xc Xc^T in Xc's dtype, computing only the upper triangle of blocks."""
    n = xc.shape[0]
    spans = edges(n, block)
    if len(spans) == 1:
        return mm(xc, xc.T)
    out = torch.empty(n, n, dtype=xc.dtype, device=xc.device)
    target = _cpu_view(out)
    if target is None:
        target = out
    for i, (a0, a1) in enumerate(spans):
        xa = xc[a0:a1]
        for b0, b1 in spans[i:]:
            blk = mm(xa, xc[b0:b1].T)
            blk = blk.numpy() if isinstance(target, np.ndarray) else blk
            target[a0:a1, b0:b1] = blk
            if b0 != a0:
                target[b0:b1, a0:a1] = blk.T
    return out


def gram_inner_products(grams: list[Tensor], block_bytes: int = 16 * 2**20) -> Tensor:
    """[G, G] float64 matrix of Frobenius inner products <K_u, K_v> of N x N matrices (all pairs at once).

    Row blocks of all matrices are converted to float64 once, into one reused buffer, and multiplied
    as one (G x b) @ (b x G) product, instead of one float64-accumulated pass over N^2 elements per pair.
    """
    n = grams[0].shape[0]
    count = len(grams)
    rows = max(1, block_bytes // (8 * count * n))
    total = torch.zeros(count, count, dtype=torch.float64)
    buffer = torch.empty(count, rows * n, dtype=torch.float64, device=grams[0].device)
    for r0, r1 in edges(n, rows):
        stacked = buffer[:, :(r1 - r0) * n]
        target = _cpu_view(stacked)
        for u, k in enumerate(grams):
            view = _cpu_view(k)
            if target is not None and view is not None:
                target[u] = view[r0:r1].reshape(-1)
            else:
                stacked[u] = k[r0:r1].reshape(-1)
        total += mm(stacked, stacked.T).cpu()
    return total


def row_sums64(k: Tensor, block: int = BLOCK) -> Tensor:
    """Row sums of an N x N matrix accumulated in float64."""
    return torch.cat([k[a0:a1].sum(1, dtype=torch.float64) for a0, a1 in edges(k.shape[0], block)])


def _centring(k: Tensor, debiased: bool, block: int) -> tuple[Tensor, float]:
    """Per-row offsets r and grand offset m such that Kc_ij = K_ij - r_i - r_j + m (float64).

    Biased: Kc = H K H. Debiased: Kc is the U-centred K, defined with a zero diagonal (Song et al. 2012;
    Szekely & Rizzo 2014), whose inner products are n(n-3) times the unbiased HSIC.
    """
    n = k.shape[0]
    rows = row_sums64(k, block)
    if debiased:
        rows = rows - k.diagonal().to(torch.float64)
        return rows / (n - 2), float(rows.sum()) / ((n - 1) * (n - 2))
    return rows / n, float(rows.sum()) / n**2


def _centred_block(k: Tensor, rows: Tensor, mean: float, a0: int, a1: int, debiased: bool) -> Tensor:
    """Rows a0:a1 of the centred kernel, in float64."""
    blk = k[a0:a1].to(torch.float64) - rows[a0:a1, None] - rows[None, :] + mean
    if debiased:
        blk.diagonal(offset=a0).zero_()
    return blk


def centred_gram_sums(k: Tensor, l_: Tensor, *, debiased: bool,
                      block: int = 1024) -> tuple[float, float, float]:
    """(<Kc, Lc>, ||Kc||^2, ||Lc||^2) for explicitly centred kernels (see _centring), all in float64.

    The centring is applied block by block in float64, so a kernel stored in float32 loses nothing
    to the cancellation between K and its means.
    """
    rk, mk = _centring(k, debiased, block)
    rl, ml = _centring(l_, debiased, block)
    xy = xx = yy = 0.0
    for a0, a1 in edges(k.shape[0], block):
        kb = _centred_block(k, rk, mk, a0, a1, debiased)
        lb = _centred_block(l_, rl, ml, a0, a1, debiased)
        xy += float(torch.dot(kb.reshape(-1), lb.reshape(-1)))
        xx += float(torch.dot(kb.reshape(-1), kb.reshape(-1)))
        yy += float(torch.dot(lb.reshape(-1), lb.reshape(-1)))
    return xy, xx, yy


def centre_kernel_(k: Tensor, *, debiased: bool, block: int = 1024) -> float:
    """Centre the kernel in place (H K H, or U-centred when debiased); return ||Kc||^2 (float64 values)."""
    rows, mean = _centring(k, debiased, block)
    total = 0.0
    for a0, a1 in edges(k.shape[0], block):
        blk = _centred_block(k, rows, mean, a0, a1, debiased)
        total += float(torch.dot(blk.reshape(-1), blk.reshape(-1)))
        k[a0:a1] = blk
    return total
