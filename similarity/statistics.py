"""Uncertainty for any measure: bootstrap confidence intervals and permutation tests over examples.

Both resample *examples* (rows of x and y together for the bootstrap; rows of y alone for the
permutation null of "no correspondence between x and y"). Linear CKA (biased or debiased) takes a
fast route when N <= FAST_MAX_N: its centred Gram matrices are built once and each resample only
gathers and reduces them (O(N^2) instead of O(N D min(N, D)) per draw); the values are the same as
calling the measure on the resampled tensors. Other measures are called once per draw.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from similarity._blocks import centred_gram_sums, gram
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


def _linear_grams(measure: Callable, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, bool] | None:
    """float64 Gram matrices of the centred inputs when the measure is linear CKA and N is small enough."""
    name = getattr(measure, "name", None)
    if name not in ("linear_cka", "linear_cka_debiased") or x.shape[0] > FAST_MAX_N:
        return None
    if getattr(measure, "fn", None) is not get_measure(name).fn:
        return None
    dtype = compute_dtype(x, y)
    k = gram(centre(x, dtype)[0]).to(torch.float64)
    l_ = gram(centre(y, dtype)[0]).to(torch.float64)
    return k, l_, name == "linear_cka_debiased"


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
    grams = _linear_grams(fn, x, y)
    if grams is not None:
        k, l_, debiased = grams

        def draw(i: int) -> float:
            idx = indices[i].to(k.device)
            return _ratio(*centred_gram_sums(k[idx][:, idx], l_[idx][:, idx], debiased=debiased))
    else:
        def draw(i: int) -> float:
            idx = indices[i].to(x.device)
            return float(fn(x[idx], y[idx]))
    values = _draws(draw, n_boot)
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
    grams = _linear_grams(fn, x, y)
    if grams is not None:
        k, l_, debiased = grams
        observed = _ratio(*centred_gram_sums(k, l_, debiased=debiased))

        def draw(i: int) -> float:
            p = perms[i].to(k.device)
            return _ratio(*centred_gram_sums(k, l_[p][:, p], debiased=debiased))
    else:
        observed = float(fn(x, y))

        def draw(i: int) -> float:
            return float(fn(x, y[perms[i].to(y.device)]))
    values = _draws(draw, n_perm)
    if math.isnan(observed):
        raise SimilarityInputError("the measure is undefined (NaN) on these inputs, e.g. a representation is "
                                   "constant across examples; a permutation test needs a defined value.")
    tolerance = 1e-12 * max(1.0, abs(observed))  # ties up to rounding count as "as extreme"
    extreme = values >= observed - tolerance if higher_is_more_similar else values <= observed + tolerance
    return float((1 + int(np.sum(extreme))) / (1 + n_perm))
