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
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from similarity._blocks import edges
from similarity._inputs import as_matrix, as_pair, centre, check_choice, compute_dtype, normalise_rows
from similarity._matmul import mm

RDM_METRICS = ("correlation", "euclidean", "cosine")
COMPARISONS = ("spearman", "pearson", "kendall_tau_a")

# Rows of the RDM strip computed per block product.
_ROW_BLOCK = 1024
# From this many examples on, rsa_similarity ranks x's and y's RDMs in two threads.
_THREADED_MIN_N = 500


def _upper_strips(z: Tensor, transform=None) -> Tensor:
    """Condensed upper triangle of z z^T (or of transform(a0, a1, strip) applied in float64 to each strip).

    Only the strip right of the diagonal is multiplied (3/4 of a full Gram matrix at N=2,048, tending
    to half for large N), at most _ROW_BLOCK x N of it exists at a time, and each row's part right of
    the diagonal is copied straight into the output. Without a transform the result keeps z's dtype (the exact products
    of the compute dtype); with one it is float64.
    """
    n = z.shape[0]
    out = torch.empty(n * (n - 1) // 2, dtype=z.dtype if transform is None else torch.float64, device=z.device)
    on_cpu = z.device.type == "cpu"
    flat = out.numpy() if on_cpu else out
    start = 0
    for a0, a1 in edges(n, _ROW_BLOCK):
        block = mm(z[a0:a1], z[a0:].T)
        if transform is not None:
            block = transform(a0, a1, block.to(torch.float64))
        if on_cpu:  # plain row copies: no mask, no threads to synchronise
            rows = block.numpy()
            for r in range(a1 - a0):
                stop = start + rows.shape[1] - r - 1
                flat[start:stop] = rows[r, r + 1:]
                start = stop
        else:
            mask = torch.ones(a1 - a0, n - a0, dtype=torch.bool, device=z.device).triu_(diagonal=1)
            stop = start + int(mask.sum())
            torch.masked_select(block, mask, out=flat[start:stop])
            start = stop
    return out


def rdm(x: Tensor, metric: str = "correlation") -> Tensor:
    """Representational dissimilarity matrix of [N, ...] as its condensed upper triangle (N(N-1)/2, float64).

    Rows with zero variance ("correlation") or zero norm ("cosine") are treated as uncorrelated with
    every other row (dissimilarity 1) instead of producing NaN.
    """
    return _rdm(x, metric, "x")


def _rdm_parts(x: Tensor, metric: str, name: str) -> tuple[Tensor, bool]:
    """(t, one_minus): the RDM is 1 - t (t: similarities in the compute dtype) when one_minus, else t itself.

    "correlation" and "cosine" are 1 - (a product of unit rows): keeping the product in its compute
    dtype lets Spearman rank float32 values exactly (see _spearman_ranks_float32).
    """
    check_choice("RDM metric", metric, RDM_METRICS)
    x = as_matrix(x, name)
    if x.shape[0] < 2:
        raise ValueError(f"an RDM needs at least 2 examples, got {x.shape[0]}; pass more examples.")
    dtype = compute_dtype(x)
    if metric == "euclidean":
        xc, sq = centre(x, dtype, name)

        def to_distance(a0: int, a1: int, g: Tensor) -> Tensor:
            return (sq[a0:a1, None] + sq[None, a0:] - 2 * g).clamp_(min=0).sqrt_()

        return _upper_strips(xc, to_distance), False
    return _upper_strips(normalise_rows(x, dtype, centre_first=metric == "correlation", name=name)), True


def _rdm(x: Tensor, metric: str, name: str) -> Tensor:
    values, one_minus = _rdm_parts(x, metric, name)
    return values.to(torch.float64).neg_().add_(1.0) if one_minus else values


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


def _sorted_average_ranks(new_group: np.ndarray) -> np.ndarray:
    """Average ranks (float64, 1..m) along the sorted order, from the mask of where a new value starts.

    Ranks start as the positions 1..m; only the elements of tied groups are then overwritten with
    their group's mean, found from the (usually few) positions that repeat their predecessor.
    """
    m = new_group.size
    ranks = np.arange(1, m + 1, dtype=np.float64)
    repeats = np.flatnonzero(~new_group)  # sorted positions equal to the one before
    if repeats.size == 0:
        return ranks
    run_start = np.empty(repeats.size, dtype=bool)  # a tied group = a run of consecutive repeats
    run_start[0] = True
    np.not_equal(repeats[1:], repeats[:-1] + 1, out=run_start[1:])
    starts = np.flatnonzero(run_start)
    run_length = np.diff(starts, append=repeats.size)
    first = repeats[starts] - 1  # the group's first member is the position before its first repeat
    mean_rank = first + (run_length + 2) / 2  # mean of 1-based ranks first+1 .. first+run_length+1
    ranks[first] = mean_rank
    ranks[repeats] = np.repeat(mean_rank, run_length)
    return ranks


def _group_starts(ordered: np.ndarray) -> np.ndarray:
    """True where a sorted array holds a new value (always at 0)."""
    new_group = np.empty(ordered.size, dtype=bool)
    new_group[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new_group[1:])
    return new_group


def average_ranks(v: Tensor) -> Tensor:
    """Ranks 1..n of a 1-D tensor, ties sharing their average rank (as scipy.stats.rankdata), float64."""
    if v.device.type != "cpu":
        return _average_ranks_torch(v)
    values = np.ascontiguousarray(v.detach().to(torch.float64).numpy())
    order, ordered = _argsort(values)
    new_group = _group_starts(ordered)
    del ordered
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = _sorted_average_ranks(new_group)
    return torch.from_numpy(ranks)


def _standardised_ranks(order: np.ndarray, new_group: np.ndarray) -> np.ndarray:
    """standardised(average ranks) from a sorting order and its new-value mask, as a float64 array.

    Average ranks always sum to m(m+1)/2, so the centring is exact; the values are scattered back to
    the original order last, once.
    """
    m = order.size
    centred = _sorted_average_ranks(new_group)
    centred -= (m + 1) / 2
    norm = math.sqrt(float(np.dot(centred, centred)))
    if norm > 0:
        centred /= norm
    out = np.empty(m, dtype=np.float64)
    out[order] = centred
    return out


# Similarities t with 0 < |t| < 2^-28 are the only float32 values for which 1 - t rounds in float64.
_TINY_FLOAT32_BITS = int(np.array(2.0**-28, dtype=np.float32).view(np.int32))


def _descending_float32_keys(t: np.ndarray) -> np.ndarray | None:
    """int32 keys that order float32 values from largest to smallest as signed integers, equal iff the
    values are equal.

    Descending t is ascending 1 - t; for float32 t that map is exact and one to one in float64
    (rdm()'s values) unless some 0 < |t| < 2^-28, where None is returned. -0.0 and 0.0 share a key.
    """
    bits = np.subtract(np.float32(0.0), t).view(np.int32)  # 0 - t orders as -t and has no -0.0
    magnitude = bits & np.int32(0x7FFFFFFF)
    magnitude -= np.int32(1)  # now 0 < |t| < 2^-28  <=>  0 <= magnitude < _TINY_FLOAT32_BITS - 1
    if bool((magnitude.view(np.uint32) < np.uint32(_TINY_FLOAT32_BITS - 1)).any()):
        return None
    del magnitude
    # IEEE bits -> signed integers in the same order: negative floats flip their magnitude bits.
    bits ^= (bits >> np.int32(31)) & np.int32(0x7FFFFFFF)
    return bits


# Positions of the low and high 32-bit words inside an int64, as seen through an int32 view.
_LOW, _HIGH = (0, 1) if sys.byteorder == "little" else (1, 0)


def _spearman_ranks_float32(t: Tensor) -> np.ndarray | None:
    """standardised(average ranks of 1 - t) for float32 t on the CPU, or None when the shortcut is not exact.

    Each value's 32-bit order key is the high word of an int64 whose low word is the value's index,
    and the int64s are sorted as plain integers (one vectorised sort, no argsort); the sorted order and
    the sorted keys are then just the two words. Equal values are recognised from the keys, so the
    ranks, ties included, are exactly those of rdm()'s float64 values 1 - t.
    """
    m = t.numel()
    if m >= 2**31:
        return None
    keys = _descending_float32_keys(t.numpy())
    if keys is None:
        return None
    packed = np.empty(m, dtype=np.int64)
    words = packed.view(np.int32).reshape(m, 2)
    words[:, _HIGH] = keys
    del keys
    words[:, _LOW] = np.arange(m, dtype=np.int32)
    packed.sort()
    order = words[:, _LOW].astype(np.intp)  # contiguous native indices scatter fastest
    return _standardised_ranks(order, _group_starts(words[:, _HIGH]))


def _spearman_ranks_float64(v: np.ndarray) -> np.ndarray:
    """standardised(average ranks of v) for float64 values (the general route)."""
    order, ordered = _argsort(v)
    new_group = _group_starts(ordered)
    del ordered
    return _standardised_ranks(order, new_group)


def _standardised_np(v: np.ndarray) -> np.ndarray:
    """standardised() for a numpy array (a new float64 array)."""
    v = np.asarray(v, dtype=np.float64)
    v = v - v.mean()
    norm = math.sqrt(float(np.einsum("i,i->", v, v)))
    if norm > 0:
        v /= norm
    else:
        v[:] = 0.0
    return v


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
    if v.device.type == "cpu":
        return torch.from_numpy(_standardised_np(v.detach().to(torch.float64).numpy()))
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
    return _prepared(*_rdm_parts(x, metric, name), compare)


def _prepared(values: Tensor, one_minus: bool, compare: str) -> Tensor:
    """_comparable's second half, from _rdm_parts' output (CPU work in numpy, which releases the GIL)."""
    on_cpu = values.device.type == "cpu"
    if compare == "spearman" and on_cpu:
        ranks = _spearman_ranks_float32(values) if one_minus and values.dtype == torch.float32 else None
        if ranks is None:
            if one_minus:
                values = values.to(torch.float64).neg_().add_(1.0)
            ranks = _spearman_ranks_float64(np.ascontiguousarray(values.numpy()))
        return torch.from_numpy(ranks)
    if one_minus:
        values = values.to(torch.float64).neg_().add_(1.0)
    if compare == "kendall_tau_a":
        return values
    return standardised(average_ranks(values) if compare == "spearman" else values)


def rsa_similarity(x: Tensor, y: Tensor, *, rdm_metric: str = "correlation",
                   compare: str = "spearman") -> float:
    """RSA similarity of two representations of the same examples: correlation of their RDMs (1 = same).

    The two RDMs are built one after the other (each product uses every core); for large N their
    rankings then run in two threads (numpy's sorts release the GIL).
    """
    check_choice("RDM metric", rdm_metric, RDM_METRICS)
    check_choice("RDM comparison", compare, COMPARISONS)
    x, y = as_pair(x, y, min_examples=3)
    parts_x, parts_y = _rdm_parts(x, rdm_metric, "x"), _rdm_parts(y, rdm_metric, "y")
    if x.shape[0] >= _THREADED_MIN_N and compare == "spearman":
        with ThreadPoolExecutor(max_workers=2) as pool:
            future = pool.submit(_prepared, *parts_y, compare)
            a = _prepared(*parts_x, compare)
            b = future.result()
    else:
        a, b = _prepared(*parts_x, compare), _prepared(*parts_y, compare)
    if compare == "kendall_tau_a":
        return kendall_tau_a(a, b)
    return float(np.dot(a.numpy(), b.numpy())) if a.device.type == "cpu" else float(torch.dot(a, b))


def rsa_dissimilarity(x: Tensor, y: Tensor, *, rdm_metric: str = "correlation",
                      compare: str = "spearman") -> float:
    """1 - rsa_similarity: the MAML paper's second-level dissimilarity (0 = identical geometry)."""
    return 1.0 - rsa_similarity(x, y, rdm_metric=rdm_metric, compare=compare)
