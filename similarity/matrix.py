"""Layer x layer similarity matrices, computing each layer's expensive part once.

similarity_matrix(reps_a, reps_b, measure) compares every layer of reps_a with every layer of
reps_b. Looping a pairwise measure over L_a x L_b pairs recomputes each layer's Gram or D x D
products L times; here:
- linear CKA: each layer is centred once; a cost model decides which layers get an N x N Gram
  matrix (all Gram-Gram inner products then come from one blocked float64 product) and which stay
  in feature space (pairs cost N Da Db), minimising total multiply-adds under a memory budget;
- RBF CKA: each layer's centred kernel is built once, pairs are inner products;
- RSA: each layer's RDM (ranked and standardised for Spearman/Pearson) is built once, pairs are
  dot products;
- any other measure is looped pair by pair.
A layer object present in both dicts (same tensor) is prepared only once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from similarity._blocks import centre_kernel_, cross_feature_sq, dot64, edges, gram, gram_inner_products, self_sq
from similarity._inputs import SimilarityInputError, as_matrix, centre, compute_dtype
from similarity.cka import _ratio, debias, rbf_kernel
from similarity.registry import MEASURES, Measure, get_measure
from similarity.rsa import _comparable, correlate

# Largest total size of the N x N Gram matrices kept at once by the linear CKA planner.
GRAM_BUDGET_BYTES = 3 * 2**30


def _check_layers(reps: Mapping[str, Tensor], side: str) -> list[tuple[str, Tensor]]:
    if not isinstance(reps, Mapping) or len(reps) == 0:
        raise SimilarityInputError(f"{side} must be a non-empty mapping layer name -> [N, ...] tensor, got "
                                   f"{type(reps).__name__} {'(empty)' if isinstance(reps, Mapping) else ''}.")
    return [(str(name), as_matrix(t, f"{side}[{name!r}]")) for name, t in reps.items()]


Layers = list[tuple[str, Tensor]]


def _unique(layers_a: Layers, layers_b: Layers) -> tuple[list[Tensor], list[int], list[int]]:
    """Distinct tensors (same memory, shape and strides = same tensor) and each side's index into them."""
    tensors: list[Tensor] = []
    seen: dict[tuple, int] = {}

    def index(t: Tensor) -> int:
        key = (t.device, t.data_ptr(), tuple(t.shape), t.stride(), t.dtype)
        if key not in seen:
            seen[key] = len(tensors)
            tensors.append(t)
        return seen[key]

    return tensors, [index(t) for _, t in layers_a], [index(t) for _, t in layers_b]


def _plan_grams(n: int, widths: list[int], pairs: set[tuple[int, int]], itemsize: int) -> set[int]:
    """Layers that get an N x N Gram: the width threshold with the fewest multiply-adds within the budget."""
    best: tuple[float, set[int]] | None = None
    max_grams = GRAM_BUDGET_BYTES // max(1, n * n * itemsize)
    for threshold in sorted(set(widths)) + [float("inf")]:
        grams = {u for u, d in enumerate(widths) if d >= threshold}
        if len(grams) > max_grams:
            continue
        cost = sum(n * n * widths[u] / 2 if u in grams else n * widths[u] * min(widths[u], n) / 2
                   for u in range(len(widths)))
        cost += sum(n * n if (a in grams and b in grams) else n * widths[a] * widths[b] for a, b in pairs)
        if best is None or cost < best[0]:
            best = (cost, grams)
    return best[1] if best else set()


def _linear_cka_matrix(tensors: list[Tensor], idx_a: list[int], idx_b: list[int], *,
                       debiased: bool) -> Tensor:
    n = tensors[0].shape[0]
    dtype = compute_dtype(*tensors)
    centred = [centre(t, dtype) for t in tensors]
    pairs = {(a, b) if a <= b else (b, a) for a in idx_a for b in idx_b if a != b}
    grams_for = _plan_grams(n, [t.shape[1] for t in tensors], pairs, torch.finfo(dtype).bits // 8)
    gram_order = sorted(grams_for)
    grams = [gram(centred[u][0]) for u in gram_order]
    gram_products = gram_inner_products(grams) if grams else None  # every Gram-Gram pair in one pass
    del grams
    slot = {u: i for i, u in enumerate(gram_order)}
    self_terms = [float(gram_products[slot[u], slot[u]]) if u in slot else self_sq(centred[u][0])
                  for u in range(len(tensors))]
    cross: dict[tuple[int, int], float] = {}
    for a, b in pairs:
        if a in slot and b in slot:
            cross[a, b] = float(gram_products[slot[a], slot[b]])
        else:
            cross[a, b] = cross_feature_sq(centred[a][0], centred[b][0])
    for u in range(len(tensors)):
        cross[u, u] = self_terms[u]
    if debiased:
        diag = [d for _, d in centred]
        cross = {(a, b): debias(v, diag[a], diag[b], n) for (a, b), v in cross.items()}
    out = torch.empty(len(idx_a), len(idx_b), dtype=torch.float64)
    for i, a in enumerate(idx_a):
        for j, b in enumerate(idx_b):
            out[i, j] = _ratio(cross[min(a, b), max(a, b)], cross[a, a], cross[b, b])
    return out


def _centred_kernel(x: Tensor, *, debiased: bool) -> tuple[Tensor, float]:
    """The layer's RBF kernel centred once (in its compute dtype) and its squared norm (from float64)."""
    k = rbf_kernel(x)
    return k, centre_kernel_(k, debiased=debiased)


def _rbf_cka_matrix(tensors: list[Tensor], idx_a: list[int], idx_b: list[int], *, debiased: bool) -> Tensor:
    n = tensors[0].shape[0]
    prepared = [_centred_kernel(t, debiased=debiased) for t in tensors]
    out = torch.empty(len(idx_a), len(idx_b), dtype=torch.float64)
    cache: dict[tuple[int, int], float] = {}
    for i, a in enumerate(idx_a):
        for j, b in enumerate(idx_b):
            key = (min(a, b), max(a, b))
            if key not in cache:
                ka, kb = prepared[key[0]][0], prepared[key[1]][0]
                cache[key] = sum(dot64(ka[r0:r1], kb[r0:r1]) for r0, r1 in edges(n, 1024))
            out[i, j] = _ratio(cache[key], prepared[a][1], prepared[b][1])
    return out


def _rsa_matrix(tensors: list[Tensor], idx_a: list[int], idx_b: list[int], *, compare: str,
                rdm_metric: str = "correlation") -> Tensor:
    prepared = [_comparable(t, rdm_metric, compare, "x") for t in tensors]
    values: dict[tuple[int, int], float] = {}
    for a in idx_a:
        for b in idx_b:
            key = (min(a, b), max(a, b))
            if key not in values:
                values[key] = correlate(prepared[key[0]], prepared[key[1]], compare)
    return torch.tensor([[values[min(a, b), max(a, b)] for b in idx_b] for a in idx_a], dtype=torch.float64)


_FAST: dict[str, Callable[[list[Tensor], list[int], list[int]], Tensor]] = {
    "linear_cka": lambda t, a, b: _linear_cka_matrix(t, a, b, debiased=False),
    "linear_cka_debiased": lambda t, a, b: _linear_cka_matrix(t, a, b, debiased=True),
    "rbf_cka": lambda t, a, b: _rbf_cka_matrix(t, a, b, debiased=False),
    "rbf_cka_debiased": lambda t, a, b: _rbf_cka_matrix(t, a, b, debiased=True),
    "rsa_spearman": lambda t, a, b: _rsa_matrix(t, a, b, compare="spearman"),
    "rsa_pearson": lambda t, a, b: _rsa_matrix(t, a, b, compare="pearson"),
    "rsa_kendall_tau_a": lambda t, a, b: _rsa_matrix(t, a, b, compare="kendall_tau_a"),
    "rsa_dissimilarity": lambda t, a, b: 1.0 - _rsa_matrix(t, a, b, compare="spearman"),
}


def similarity_matrix(reps_a: Mapping[str, Tensor], reps_b: Mapping[str, Tensor],
                      measure: str | Measure = "linear_cka") -> tuple[Tensor, list[str], list[str]]:
    """[L_a, L_b] float64 matrix of measure(reps_a[i], reps_b[j]) with the row and column layer names.

    All layers must hold the same N examples in the same order. measure is a registry name (see
    MEASURES) or a Measure from get_measure; a distance measure gives a distance matrix.
    """
    fn = get_measure(measure) if isinstance(measure, str) else measure
    if not callable(fn):
        raise TypeError(f"measure must be a registry name or a callable (x, y) -> float: {type(fn).__name__}")
    layers_a, layers_b = _check_layers(reps_a, "reps_a"), _check_layers(reps_b, "reps_b")
    counts = {t.shape[0] for _, t in layers_a + layers_b}
    if len(counts) != 1:
        raise SimilarityInputError(f"layers hold different numbers of examples {sorted(counts)}; every layer "
                                   "must be computed on the same examples (same N, same order).")
    names_a, names_b = [name for name, _ in layers_a], [name for name, _ in layers_b]
    tensors, idx_a, idx_b = _unique(layers_a, layers_b)
    fast = _FAST.get(getattr(fn, "name", ""))
    if fast is not None and getattr(fn, "fn", None) is MEASURES[fn.name].fn:
        return fast(tensors, idx_a, idx_b), names_a, names_b
    values = [[float(fn(tensors[a], tensors[b])) for b in idx_b] for a in idx_a]
    out = torch.tensor(values, dtype=torch.float64)
    return out, names_a, names_b
