"""Representational similarity analysis: RDMs and their comparison.

First level: an RDM over the N examples (condensed upper triangle, scipy ``pdist`` order, float64):
  "correlation" 1 - Pearson r between two examples' feature vectors (the MAML study's choice),
  "euclidean"   plain Euclidean distance (scipy's; rsatoolbox's "euclidean" is squared / D instead),
  "cosine"      1 - cosine similarity.
Second level: "spearman" (Pearson r of average ranks, as scipy/rsatoolbox), "pearson", or
"kendall_tau_a" (ties count in the denominator, as rsatoolbox's "tau-a").
rsa_similarity returns the correlation itself (1 = same geometry); rsa_dissimilarity is the
"1 - rho" of Goerttler & Obermayer's MAML paper (0 = same geometry).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from similarity._blocks import edges
from similarity._inputs import as_matrix, as_pair, centre, check_choice, compute_dtype, normalise_rows

RDM_METRICS = ("correlation", "euclidean", "cosine")
COMPARISONS = ("spearman", "pearson", "kendall_tau_a")

# Rows of the RDM strip computed per block product.
_ROW_BLOCK = 1024
# From this many examples on, rsa_similarity prepares x and y in two threads.
_THREADED_MIN_N = 500


def _upper_strips(z: Tensor, transform=None) -> Tensor:
    """Condensed upper triangle of z z^T (or of transform(rows, g) applied to each strip g), in float64.

    Only the strip right of the diagonal is multiplied (half the work of a full Gram matrix), and
    at most _ROW_BLOCK x N of it exists at a time.
    """
    n = z.shape[0]
    parts = []
    for a0, a1 in edges(n, _ROW_BLOCK):
        block = z[a0:a1] @ z[a0:].T
        if transform is not None:
            block = transform(a0, a1, block.to(torch.float64))
        mask = torch.ones(a1 - a0, n - a0, dtype=torch.bool, device=z.device).triu_(diagonal=1)
        parts.append(block[mask].to(torch.float64))
    return torch.cat(parts)


def rdm(x: Tensor, metric: str = "correlation") -> Tensor:
    """Representational dissimilarity matrix of [N, ...] as its condensed upper triangle (N(N-1)/2, float64).

    Rows with zero variance ("correlation") or zero norm ("cosine") are treated as uncorrelated with
    every other row (dissimilarity 1) instead of producing NaN.
    """
    return _rdm(x, metric, "x")


def _rdm(x: Tensor, metric: str, name: str) -> Tensor:
    check_choice("RDM metric", metric, RDM_METRICS)
    x = as_matrix(x, name)
    if x.shape[0] < 2:
        raise ValueError(f"an RDM needs at least 2 examples, got {x.shape[0]}; pass more examples.")
    dtype = compute_dtype(x)
    if metric == "euclidean":
        xc, sq = centre(x, dtype, name)

        def to_distance(a0: int, a1: int, g: Tensor) -> Tensor:
            return (sq[a0:a1, None] + sq[None, a0:] - 2 * g).clamp_(min=0).sqrt_()

        return _upper_strips(xc, to_distance)
    g = _upper_strips(normalise_rows(x, dtype, centre_first=metric == "correlation", name=name))
    return g.neg_().add_(1.0)


def _argsort(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, values[order]) for float64 values, sorting one uint64 array instead of an argsort.

    The top bits of an order-preserving integer image of each value are packed with its index and
    sorted as plain integers (several times faster than argsort); values that agree in those top
    bits (relative difference < ~1e-9) may come out of order, so a stable argsort - linear time on
    nearly sorted data - finishes the job. The result is an exact sort.
    """
    m = values.size
    bits = values.view(np.int64)
    key = (bits ^ ((bits >> np.int64(63)) & np.int64(0x7FFFFFFFFFFFFFFF))).view(np.uint64)
    key ^= np.uint64(1 << 63)
    shift = np.uint64(max(1, (m - 1).bit_length()))
    key >>= shift
    key <<= shift
    key |= np.arange(m, dtype=np.uint64)
    key.sort()
    order = (key & ((np.uint64(1) << shift) - np.uint64(1))).astype(np.int64)
    del key
    ordered = values[order]
    if not bool(np.all(ordered[1:] >= ordered[:-1])):
        fix = np.argsort(ordered, kind="stable")
        order, ordered = order[fix], ordered[fix]
    return order, ordered


def average_ranks(v: Tensor) -> Tensor:
    """Ranks 1..n of a 1-D tensor, ties sharing their average rank (as scipy.stats.rankdata), float64."""
    if v.device.type != "cpu":
        return _average_ranks_torch(v)
    values = np.ascontiguousarray(v.detach().to(torch.float64).numpy())
    m = values.size
    order, ordered = _argsort(values)
    new_group = np.empty(m, dtype=bool)
    new_group[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new_group[1:])
    del ordered
    ranks = np.empty(m, dtype=np.float64)
    if new_group.all():
        ranks[order] = np.arange(1, m + 1, dtype=np.float64)
    else:
        starts = np.flatnonzero(new_group)
        ends = np.append(starts[1:], m)
        ranks[order] = ((starts + ends + 1) / 2)[np.cumsum(new_group) - 1]
    return torch.from_numpy(ranks)


def _average_ranks_torch(v: Tensor) -> Tensor:
    """average_ranks for tensors off the CPU (a plain stable argsort)."""
    n = v.numel()
    order = torch.argsort(v, stable=True)
    sorted_v = v[order]
    new_group = torch.ones(n, dtype=torch.bool, device=v.device)
    new_group[1:] = sorted_v[1:] != sorted_v[:-1]
    del sorted_v
    starts = torch.nonzero(new_group).squeeze(1)
    ends = torch.cat([starts[1:], torch.tensor([n], device=v.device)])
    group_rank = (starts + ends + 1).to(torch.float64) / 2  # mean of positions start+1 .. end
    ranks = torch.empty(n, dtype=torch.float64, device=v.device)
    ranks[order] = group_rank[torch.cumsum(new_group, 0) - 1]
    return ranks


def standardised(v: Tensor) -> Tensor:
    """(v - mean) / ||v - mean|| in float64, so that the Pearson r of two such vectors is their dot product.

    A constant vector has no direction: it is returned as zeros (its correlation with anything is 0).
    """
    v = v.to(torch.float64)
    v = v - v.mean()
    norm = torch.linalg.vector_norm(v)
    return v / norm if norm > 0 else torch.zeros_like(v)


def kendall_tau_a(a: Tensor, b: Tensor) -> float:
    """Kendall tau-a = (concordant - discordant) / (n(n-1)/2); ties count in the denominator.

    Uses scipy's O(n log n) tau-b and its tie counts: tau_a = tau_b sqrt((T - t_a)(T - t_b)) / T.
    """
    a_np, b_np = a.detach().cpu().numpy(), b.detach().cpu().numpy()
    n = a_np.size
    total = n * (n - 1) // 2

    def tied_pairs(v: np.ndarray) -> int:
        counts = np.unique(v, return_counts=True)[1].astype(np.int64)
        return int((counts * (counts - 1) // 2).sum())

    untied_a, untied_b = total - tied_pairs(a_np), total - tied_pairs(b_np)
    if untied_a == 0 or untied_b == 0:
        return 0.0
    tau_b = stats.kendalltau(a_np, b_np).statistic
    return float(tau_b) * math.sqrt(untied_a) * math.sqrt(untied_b) / total


def compare_rdms(a: Tensor, b: Tensor, compare: str = "spearman") -> float:
    """Similarity of two condensed RDMs: Spearman rho, Pearson r or Kendall tau-a (1 = identical order)."""
    check_choice("RDM comparison", compare, COMPARISONS)
    if a.shape != b.shape or a.dim() != 1:
        raise ValueError(f"RDMs of shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be compared; pass two "
                         "condensed RDMs of the same N (from rdm()).")
    if compare == "kendall_tau_a":
        return kendall_tau_a(a, b)
    if compare == "spearman":
        a, b = average_ranks(a), average_ranks(b)
    return float(torch.dot(standardised(a), standardised(b)))


def _comparable(x: Tensor, metric: str, compare: str, name: str) -> Tensor:
    """One side's RDM in the form its comparison needs: standardised ranks (Spearman), standardised values
    (Pearson; then rho is a dot product) or the raw RDM (Kendall)."""
    values = _rdm(x, metric, name)
    if compare == "kendall_tau_a":
        return values
    return standardised(average_ranks(values) if compare == "spearman" else values)


def rsa_similarity(x: Tensor, y: Tensor, *, rdm_metric: str = "correlation",
                   compare: str = "spearman") -> float:
    """RSA similarity of two representations of the same examples: correlation of their RDMs (1 = same).

    For large N the two sides (RDM, ranking) are prepared in two threads: the sorts release the GIL.
    """
    check_choice("RDM metric", rdm_metric, RDM_METRICS)
    check_choice("RDM comparison", compare, COMPARISONS)
    x, y = as_pair(x, y, min_examples=3)
    if x.shape[0] >= _THREADED_MIN_N:
        with ThreadPoolExecutor(max_workers=2) as pool:
            future = pool.submit(_comparable, y, rdm_metric, compare, "y")
            a = _comparable(x, rdm_metric, compare, "x")
            b = future.result()
    else:
        a, b = _comparable(x, rdm_metric, compare, "x"), _comparable(y, rdm_metric, compare, "y")
    if compare == "kendall_tau_a":
        return kendall_tau_a(a, b)
    return float(torch.dot(a, b))


def rsa_dissimilarity(x: Tensor, y: Tensor, *, rdm_metric: str = "correlation",
                      compare: str = "spearman") -> float:
    """1 - rsa_similarity: the MAML paper's second-level dissimilarity (0 = identical geometry)."""
    return 1.0 - rsa_similarity(x, y, rdm_metric=rdm_metric, compare=compare)
