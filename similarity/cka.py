"""Centered kernel alignment: linear (biased or debiased HSIC), RBF, and minibatch CKA.

CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) (Kornblith et al. 2019).
- Biased HSIC: tr(K H L H) / (n-1)^2, the estimator of Kornblith et al. and of the studies' code.
- Debiased HSIC (Song et al. 2012): the unbiased U-statistic; its CKA can be negative and is returned
  as is (never clamped), which is how independent representations show up as ~0 at small N.
- Minibatch CKA (Nguyen et al. 2021) averages debiased HSIC over batches: a different estimator,
  named as such, not an approximation of full-data linear CKA.
Inputs are [N, ...] tensors flattened to [N, D]; results are python floats. A representation that
is constant across examples has no centred variance: its CKA is undefined and returned as NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

from similarity._blocks import centred_gram_sums, edges, feature_cost, gram, gram_cost, linear_sums
from similarity._inputs import SimilarityInputError, as_pair, centre, compute_dtype


def _ratio(xy: float, xx: float, yy: float) -> float:
    """xy / sqrt(xx * yy); NaN when a self term is zero (a constant representation)."""
    denominator = math.sqrt(xx) * math.sqrt(yy) if xx > 0 and yy > 0 else 0.0
    return xy / denominator if denominator > 0 else math.nan


def debias(cross: float, diag_x: Tensor, diag_y: Tensor, n: int) -> float:
    """n(n-3) * unbiased HSIC from <K, L> of centred linear kernels and their diagonals (float64).

    With column-centred features K 1 = 0, so Song et al.'s estimator reduces to
    <K, L> - n/(n-2) diag(K).diag(L) + tr(K) tr(L) / ((n-1)(n-2))  (as in Kornblith et al.'s code).
    """
    return (cross - n / (n - 2) * float(diag_x @ diag_y)
            + float(diag_x.sum()) * float(diag_y.sum()) / ((n - 1) * (n - 2)))


def linear_hsic_terms(x: Tensor, y: Tensor, *, debiased: bool) -> tuple[float, float, float]:
    """(HSIC(x, y), HSIC(x, x), HSIC(y, y)) up to a common positive factor, for checked [N, D] inputs."""
    n = x.shape[0]
    dtype = compute_dtype(x, y)
    xc, diag_x = centre(x, dtype, "x")
    yc, diag_y = centre(y, dtype, "y")
    xy, xx, yy = linear_sums(xc, yc)
    if debiased:
        xy, xx, yy = (debias(xy, diag_x, diag_y, n), debias(xx, diag_x, diag_x, n),
                      debias(yy, diag_y, diag_y, n))
    return xy, xx, yy


def linear_cka_route(n: int, dx: int, dy: int) -> str:
    """Which products ``linear_cka`` multiplies for [n, dx] and [n, dy] inputs: "feature" (X^T X, Y^T Y,
    X^T Y, cheaper when the widths are small against n) or "gram" (X X^T and Y Y^T, n x n)."""
    return "feature" if feature_cost(n, dx, dy) <= gram_cost(n, dx, dy) else "gram"


def linear_cka(x: Tensor, y: Tensor, *, debiased: bool = False) -> float:
    """Linear CKA similarity in [0, 1] (debiased: in [-1, 1], ~0 for independent data).

    Matrix products run in the input dtype (float32 stays float32), centring and all reductions in
    float64; the D x D or N x N formulation is chosen by cost, and neither matrix is held whole.
    Agrees with a float64 reference to ~1e-7 from float32 input at N=10,000, D=4,096.
    """
    x, y = as_pair(x, y, min_examples=4 if debiased else 2)
    return _ratio(*linear_hsic_terms(x, y, debiased=debiased))


def median_sq_distance(d2: Tensor) -> float:
    """Median of the squared distances over distinct pairs i < j (numpy convention for even counts)."""
    n = d2.shape[0]
    upper = torch.cat([d2[i, i + 1:] for i in range(n - 1)])
    m = upper.numel()
    hi = float(torch.kthvalue(upper, m // 2 + 1).values)
    if m % 2:
        return hi
    return 0.5 * (float(torch.kthvalue(upper, m // 2).values) + hi)


def rbf_kernel(x: Tensor, *, bandwidth_factor: float = 1.0, name: str = "x") -> Tensor:
    """RBF kernel exp(-d^2 / (2 sigma^2)) of the rows of [N, D], sigma = bandwidth_factor * median distance.

    The median is taken over distinct pairs (i < j) of Euclidean distances, i.e.
    sigma^2 = bandwidth_factor^2 * median(d_ij^2). (Kornblith et al.'s code takes the median over the
    full matrix including the zero diagonal, which gives a slightly smaller sigma.) Distances come
    from float64 row norms and the Gram matrix in the compute dtype; the kernel is stored in that dtype.
    """
    if not bandwidth_factor > 0 or not math.isfinite(bandwidth_factor):
        raise SimilarityInputError(f"bandwidth_factor must be positive and finite, got {bandwidth_factor}; "
                                   "1.0 uses the median distance itself.")
    xc, sq = centre(x, compute_dtype(x), name)  # distances are translation invariant; centring keeps them exact
    k = gram(xc)
    del xc
    for a0, a1 in edges(k.shape[0], 1024):
        blk = (sq[a0:a1, None] + sq[None, :]) - 2 * k[a0:a1].to(torch.float64)
        blk.clamp_(min=0).diagonal(offset=a0).zero_()
        k[a0:a1] = blk
    med = median_sq_distance(k)
    if med <= 0:
        raise SimilarityInputError("at least half of the pairs of examples are identical (median distance 0),"
                                   " so the median-heuristic bandwidth is 0; remove duplicate examples.")
    k.mul_(-1.0 / (2.0 * bandwidth_factor**2 * med)).exp_()
    return k


def rbf_cka(x: Tensor, y: Tensor, *, bandwidth_factor: float = 1.0, debiased: bool = False) -> float:
    """CKA similarity with RBF kernels whose bandwidth is bandwidth_factor x the median pairwise distance.

    Needs two N x N kernels in the compute dtype (400 MB each at N=10,000 in float32); the centring and
    the inner products are done block by block in float64.
    """
    x, y = as_pair(x, y, min_examples=4 if debiased else 3)
    return _ratio(*centred_gram_sums(rbf_kernel(x, bandwidth_factor=bandwidth_factor),
                                     rbf_kernel(y, bandwidth_factor=bandwidth_factor, name="y"), debiased=debiased))


def minibatch_cka(xs: Iterable[Tensor], ys: Iterable[Tensor]) -> float:
    """Minibatch CKA (Nguyen et al. 2021), a different estimator from full-data CKA.

    CKA_mb = sum_i HSIC_1(x_i, y_i) / sqrt(sum_i HSIC_1(x_i, x_i) * sum_i HSIC_1(y_i, y_i)), where
    HSIC_1 is the unbiased (debiased) HSIC of each batch with a linear kernel, each batch normalised by
    its own n(n-3). xs and ys yield matching batches (same examples, >= 4 each, as many batches).
    """
    xy = xx = yy = 0.0
    count = 0
    ys_iter = iter(ys)
    for xb in xs:
        try:
            yb = next(ys_iter)
        except StopIteration:
            raise SimilarityInputError(f"xs yielded more batches than ys (ys ran out after {count}); pass "
                                       "iterables of the same length.") from None
        xb, yb = as_pair(xb, yb, min_examples=4)
        n = xb.shape[0]
        bxy, bxx, byy = linear_hsic_terms(xb, yb, debiased=True)
        scale = 1.0 / (n * (n - 3))
        xy, xx, yy = xy + bxy * scale, xx + bxx * scale, yy + byy * scale
        count += 1
    if next(ys_iter, None) is not None:
        raise SimilarityInputError(f"ys yielded more batches than xs ({count}); pass equally long iterables.")
    if count == 0:
        raise SimilarityInputError("minibatch_cka got no batches; pass at least one pair of [n, ...] batches")
    return _ratio(xy, xx, yy)
