"""Uncertainty for any measure: bootstrap confidence intervals and permutation tests over examples.

Both resample *examples* (rows of x and y together for the bootstrap; rows of y alone for the
permutation null of "no correspondence between x and y"). Linear CKA (biased or debiased) takes a
fast route when N <= FAST_MAX_N: its Gram matrices are built once and each draw only reduces them
(O(N^2) instead of O(N D min(N, D)) per draw, batched into matrix products); the values are those
of the measure called on the resampled tensors. Other measures are called once per draw.

Caveat for CKA: a bootstrap resample repeats examples, and repeated examples raise CKA (the same
finite-sample bias that makes biased CKA of independent data > 0), so the percentile interval can
sit above the full-data estimate; compare intervals computed the same way, and use the
permutation test to ask whether two representations are related at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from similarity._blocks import centre_kernel_, gram
from similarity._inputs import SimilarityInputError, as_pair, centre, compute_dtype
from similarity.cka import _ratio
from similarity.registry import Measure, get_measure

MeasureLike = Callable[[Tensor, Tensor], float] | str

# Largest N for which the Gram-gather fast path of linear CKA is used (two N x N float64 matrices).
FAST_MAX_N = 4096


def _resolve(measure: MeasureLike) -> Callable[[Tensor, Tensor], float]:
    if isinstance(measure, str):
        return get_measure(measure)
    if not callable(measure):
        raise TypeError(f"measure must be a registry name or a callable (x, y) -> float, got "
                        f"{type(measure).__name__}.")
    return measure


class _LinearCKAResampler:
    """Linear CKA of resampled or permuted examples from the N x N Gram matrices, computed once.

    A bootstrap draw with multiplicities c (c_i = copies of example i) has Gram K[idx][:, idx], whose
    centred inner products expand into c^T (K o L) c, c^T K c, sum_i c_i (Kc)_i (Lc)_i and diagonal
    terms: a few (draws x N) @ (N x N) products for a whole chunk of draws. A permutation of y's
    examples permutes the already centred L, so each draw is one gathered inner product.
    """

    CHUNK = 64

    def __init__(self, x: Tensor, y: Tensor, debiased: bool) -> None:
        dtype = compute_dtype(x, y)
        self.k = gram(centre(x, dtype)[0]).to(torch.float64)
        self.l = gram(centre(y, dtype)[0]).to(torch.float64)
        self.debiased = debiased

    def _hsic(self, c: Tensor, a: Tensor, b: Tensor, ab: Tensor) -> Tensor:
        """Centred inner product of the resampled kernels a and b for each row of counts c (ab = a o b)."""
        n = float(c[0].sum())
        ca, cb = c @ a, c @ b
        inner = ((c @ ab) * c).sum(1)
        sum_a, sum_b = (ca * c).sum(1), (cb * c).sum(1)
        if not self.debiased:
            return inner - 2.0 / n * (c * ca * cb).sum(1) + sum_a * sum_b / n**2
        da, db = a.diagonal(), b.diagonal()
        inner = inner - c @ (da * db)
        sum_a, sum_b = sum_a - c @ da, sum_b - c @ db
        rows = (c * (ca - da) * (cb - db)).sum(1)
        return inner + sum_a * sum_b / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * rows

    def bootstrap(self, indices: list[Tensor]) -> np.ndarray:
        n = self.k.shape[0]
        kl, kk, ll = self.k * self.l, self.k * self.k, self.l * self.l
        values = []
        for start in range(0, len(indices), self.CHUNK):
            c = torch.stack([torch.bincount(i, minlength=n) for i in indices[start:start + self.CHUNK]])
            c = c.to(device=self.k.device, dtype=torch.float64)
            xy, xx = self._hsic(c, self.k, self.l, kl), self._hsic(c, self.k, self.k, kk)
            yy = self._hsic(c, self.l, self.l, ll)
            values += [_ratio(float(a), float(b), float(d)) for a, b, d in zip(xy, xx, yy)]
        return np.array(values, dtype=np.float64)

    def observed_and_permuted(self, perms: list[Tensor]) -> tuple[float, np.ndarray]:
        kc, lc = self.k, self.l
        xx, yy = centre_kernel_(kc, debiased=self.debiased), centre_kernel_(lc, debiased=self.debiased)
        flat_k = kc.reshape(-1)
        observed = _ratio(float(torch.dot(flat_k, lc.reshape(-1))), xx, yy)
        values = [_ratio(float(torch.dot(flat_k, lc[p][:, p].reshape(-1))), xx, yy)
                  for p in (q.to(lc.device) for q in perms)]
        return observed, np.array(values, dtype=np.float64)


def _fast_linear_cka(measure: Callable, n: int) -> bool | None:
    """debiased flag when measure is the registry's linear CKA and N allows the Gram route, else None."""
    name = getattr(measure, "name", None)
    if name not in ("linear_cka", "linear_cka_debiased") or n > FAST_MAX_N:
        return None
    if getattr(measure, "fn", None) is not get_measure(name).fn:
        return None
    return name == "linear_cka_debiased"


def _draws(fn: Callable[[Tensor], float], count: int) -> np.ndarray:
    return np.array([fn(i) for i in range(count)], dtype=np.float64)


def bootstrap_ci(measure: MeasureLike, x: Tensor, y: Tensor, *, n_boot: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
    """(estimate, low, high): the measure on all examples and a percentile bootstrap interval over examples.

    Each draw resamples N examples with replacement (the same rows of x and y). Draws whose value
    is undefined (NaN) are left out of the percentiles.
    """
    if n_boot < 1:
        raise SimilarityInputError(f"n_boot must be >= 1, got {n_boot}; 1000 is a usual choice.")
    if not 0 < confidence < 1:
        raise SimilarityInputError(f"confidence must lie in (0, 1), got {confidence}; e.g. 0.95 for 95%.")
    fn = _resolve(measure)
    x, y = as_pair(x, y, min_examples=2)
    n = x.shape[0]
    estimate = float(fn(x, y))
    generator = torch.Generator().manual_seed(seed)
    indices = [torch.randint(n, (n,), generator=generator) for _ in range(n_boot)]
    debiased = _fast_linear_cka(fn, n)
    if debiased is not None:
        values = _LinearCKAResampler(x, y, debiased).bootstrap(indices)
    else:
        values = _draws(lambda i: float(fn(x[indices[i].to(x.device)], y[indices[i].to(x.device)])), n_boot)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return estimate, math.nan, math.nan
    alpha = (1 - confidence) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return estimate, float(low), float(high)


def permutation_test(measure: MeasureLike, x: Tensor, y: Tensor, *, n_perm: int = 1000, seed: int = 0,
                     higher_is_more_similar: bool | None = None) -> float:
    """p-value of the observed measure under random re-pairing of examples (rows of y permuted).

    p = (1 + #{permuted at least as extreme}) / (1 + n_perm): "at least as similar" for a similarity
    (>=), "at least as close" for a distance (<=). The direction comes from the registry's Measure;
    for a plain callable it defaults to a similarity unless higher_is_more_similar says otherwise.
    """
    if n_perm < 1:
        raise SimilarityInputError(f"n_perm must be >= 1, got {n_perm}; 1000 is a usual choice.")
    fn = _resolve(measure)
    if higher_is_more_similar is None:
        higher_is_more_similar = fn.higher_is_more_similar if isinstance(fn, Measure) else True
    x, y = as_pair(x, y, min_examples=3)
    n = x.shape[0]
    generator = torch.Generator().manual_seed(seed)
    perms = [torch.randperm(n, generator=generator) for _ in range(n_perm)]
    debiased = _fast_linear_cka(fn, n)
    if debiased is not None:
        observed, values = _LinearCKAResampler(x, y, debiased).observed_and_permuted(perms)
    else:
        observed = float(fn(x, y))
        values = _draws(lambda i: float(fn(x, y[perms[i].to(y.device)])), n_perm)
    if math.isnan(observed):
        raise SimilarityInputError("the measure is undefined (NaN) on these inputs, e.g. a representation is "
                                   "constant across examples; a permutation test needs a defined value.")
    tolerance = 1e-12 * max(1.0, abs(observed))  # ties up to rounding count as "as extreme"
    extreme = values >= observed - tolerance if higher_is_more_similar else values <= observed + tolerance
    return float((1 + int(np.sum(extreme))) / (1 + n_perm))
