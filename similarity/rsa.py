"""Representational similarity analysis: RDMs and their comparison.

First level: an RDM over the N examples (condensed upper triangle, scipy ``pdist`` order, float64):
  "correlation" 1 - Pearson r between two examples' feature vectors (the MAML study's choice),
  "euclidean"   plain Euclidean distance (scipy's; rsatoolbox's "euclidean" is squared / D instead),
  "cosine"      1 - cosine similarity.
Second level: "spearman" (Pearson r of average ranks, as scipy/rsatoolbox), "pearson", or
"kendall_tau_a" (ties count in the denominator, as rsatoolbox's "tau-a").
rsa_similarity returns the correlation itself (1 = same geometry); rsa_dissimilarity is the
"1 - rho" of Goerttler & Obermayer's MAML paper (0 = same geometry).

Precision. Centring and row norms are float64; the N x N products run in the compute dtype (float32
for float32 input, for speed), so an RDM entry from float32 input differs from the float64 RDM of the
same input by a float32 dot-product rounding error. Its guaranteed bound, whatever the BLAS kernel
and its summation order (Higham, "Accuracy and Stability of Numerical Algorithms", 3.1), is
rdm_error_bound(D): (D + 2) u for "correlation" and "cosine" (unit rows; u = 2^-24), i.e. 2.4e-4 at
D = 4,096. Typical errors are ~sqrt(D) u (1e-6 to 1.4e-6 at D = 4,096, depending on the kernel), so
an entry-wise 1e-6 agreement is *not* promised. The second-level values are: Spearman, Pearson and
Kendall RSA from float32 input agree with float64 to 1e-6 (checked at N = 10,000, D = 4,096).
"Euclidean" distances d satisfy |d_hat^2 - d^2| <= 2 (D + 2) u |x_i| |x_j| for centred rows x.
"""

from __future__ import annotations

import math
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from similarity._blocks import edges
from similarity._inputs import as_matrix, as_pair, centre, check_choice, compute_dtype, normalise_rows
from similarity._matmul import mm, one_blas_thread

RDM_METRICS = ("correlation", "euclidean", "cosine")
COMPARISONS = ("spearman", "pearson", "kendall_tau_a")

# Rows of the RDM strip computed per block product.
_ROW_BLOCK = 512
# From this many examples on, rsa_similarity builds and ranks x's and y's RDMs in two threads.
_CONCURRENT_MIN_N = 500


def _upper_strips(z: Tensor, transform=None, out: np.ndarray | None = None) -> Tensor | np.ndarray:
    """Condensed upper triangle of z z^T, or of transform(rows, cols, block) applied to each block of it.

    Rows are taken _ROW_BLOCK at a time: the symmetric diagonal block z_r z_r^T (which BLAS computes as
    a half-cost symmetric product) and the block right of it, so the products cost about N^2 D in all
    (half a full Gram matrix) and at most _ROW_BLOCK x N of them exist at a time. Each row's part right of
    the diagonal is copied straight into the output: a new tensor (z's dtype without a transform, the
    exact products of the compute dtype; float64 with one), or `out`, a 1-D numpy array (CPU only, may
    be a strided view) of the transform's dtype.
    """
    n = z.shape[0]
    on_cpu = z.device.type == "cpu"
    if out is not None:
        result = flat = out
    elif on_cpu:  # numpy asks the kernel for huge pages for large arrays: far fewer page faults than torch.empty
        dtype = np.float64 if transform is not None else z.numpy().dtype
        flat = np.empty(n * (n - 1) // 2, dtype=dtype)
        result = torch.from_numpy(flat)
    else:
        dtype = z.dtype if transform is None else torch.float64
        result = flat = torch.empty(n * (n - 1) // 2, dtype=dtype, device=z.device)
    start = 0
    for a0, a1 in edges(n, _ROW_BLOCK):
        blocks = [(slice(a0, a1), mm(z[a0:a1], z[a0:a1].T))]
        if a1 < n:
            blocks.append((slice(a1, n), mm(z[a0:a1], z[a1:].T)))
        if transform is not None:
            blocks = [(cols, transform(slice(a0, a1), cols, block)) for cols, block in blocks]
        if on_cpu:  # plain row copies: no mask, no threads to synchronise
            diag, *right = [block.numpy() if isinstance(block, Tensor) else block for _, block in blocks]
            for r in range(a1 - a0):
                stop = start + diag.shape[1] - r - 1
                flat[start:stop] = diag[r, r + 1:]
                start = stop
                if right:
                    stop = start + n - a1
                    flat[start:stop] = right[0][r]
                    start = stop
        else:
            mask = torch.ones(a1 - a0, n - a0, dtype=torch.bool, device=z.device).triu_(diagonal=1)
            block = torch.cat([block for _, block in blocks], dim=1)
            stop = start + int(mask.sum())
            torch.masked_select(block, mask, out=flat[start:stop])
            start = stop
    return result


def rdm_error_bound(n_features: int, dtype: torch.dtype = torch.float32) -> float:
    """Worst-case |rdm(x) - float64 RDM of x| for "correlation" and "cosine" RDMs of [N, n_features] input.

    The products of unit rows z_i, z_j rounded to dtype carry at most gamma_D |z_i| |z_j| from summation
    (any order) and (1 + u)^2 from rounding the unit rows to dtype; together at most gamma_{D+2}, with
    gamma_k = k u / (1 - k u) and u = eps(dtype) / 2, plus D 2^-50 for the float64 centring and norms.
    """
    unit, k = torch.finfo(dtype).eps / 2, n_features + 2
    return k * unit / (1 - k * unit) + n_features * 2.0**-50


def rdm(x: Tensor, metric: str = "correlation") -> Tensor:
    """Representational dissimilarity matrix of [N, ...] as its condensed upper triangle (N(N-1)/2, float64).

    Rows with zero variance ("correlation") or zero norm ("cosine") are treated as uncorrelated with
    every other row (dissimilarity 1) instead of producing NaN.
    """
    return _rdm(x, metric, "x")


def _rdm_rows(x: Tensor, metric: str, name: str) -> tuple[Tensor, object]:
    """(z, transform): the RDM is _upper_strips(z, transform); transform None stands for "correlation" and
    "cosine", whose RDM is 1 - z z^T of unit rows z (kept as the products t = z z^T in the compute dtype,
    which lets Spearman rank float32 values exactly, see _ranks_of_float32_keys)."""
    check_choice("RDM metric", metric, RDM_METRICS)
    x = as_matrix(x, name)
    if x.shape[0] < 2:
        raise ValueError(f"an RDM needs at least 2 examples, got {x.shape[0]}; pass more examples.")
    dtype = compute_dtype(x)
    if metric == "euclidean":
        xc, sq = centre(x, dtype, name)

        def to_distance(rows: slice, cols: slice, g: Tensor) -> Tensor:
            return (sq[rows, None] + sq[None, cols] - 2 * g.to(torch.float64)).clamp_(min=0).sqrt_()

        return xc, to_distance
    return normalise_rows(x, dtype, centre_first=metric == "correlation", name=name), None


def _rdm_parts(x: Tensor, metric: str, name: str) -> tuple[Tensor, bool]:
    """(t, one_minus): the RDM is 1 - t (t: similarities in the compute dtype) when one_minus, else t itself."""
    z, transform = _rdm_rows(x, metric, name)
    return _upper_strips(z, transform), transform is None


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


def _tied_runs(new_group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first sorted position, size) of every group of >= 2 equal values, from the new-value mask."""
    repeats = np.flatnonzero(~new_group)  # sorted positions equal to the one before
    if repeats.size == 0:
        return repeats, repeats
    run_start = np.empty(repeats.size, dtype=bool)  # a tied group = a run of consecutive repeats
    run_start[0] = True
    np.not_equal(repeats[1:], repeats[:-1] + 1, out=run_start[1:])
    starts = np.flatnonzero(run_start)
    first = repeats[starts] - 1  # the group's first member is the position before its first repeat
    return first, np.diff(starts, append=repeats.size) + 1


def _fill_tied_runs(sorted_values: np.ndarray, first: np.ndarray, size: np.ndarray, group_value: np.ndarray) -> None:
    """Overwrite every member of each tied group (first, size) along the sorted order with its group's value."""
    members = np.repeat(first - np.cumsum(size, dtype=first.dtype) + size, size) + np.arange(int(size.sum()))
    sorted_values[members] = np.repeat(group_value, size)


def _sorted_average_ranks(new_group: np.ndarray) -> np.ndarray:
    """Average ranks (float64, 1..m) along the sorted order, from the mask of where a new value starts.

    Ranks start as the positions 1..m; only the elements of tied groups are then overwritten with
    their group's mean.
    """
    ranks = np.arange(1, new_group.size + 1, dtype=np.float64)
    first, size = _tied_runs(new_group)
    if first.size:
        _fill_tied_runs(ranks, first, size, first + (size + 1) / 2)  # mean of ranks first+1 .. first+size
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


def _centred_ranks(order: np.ndarray, new_group: np.ndarray) -> tuple[np.ndarray, float]:
    """(c, ||c||): c = 2 x (average rank - mean rank) of each value, in the original order, as integers.

    Doubling makes every average rank (a half-integer) and the mean rank exact integers, so c is exact
    in int32 (half the memory traffic of float64 ranks) and Spearman's rho is <c_a, c_b> / (||c_a|| ||c_b||).
    Along the sorted order c is 2k + 1 - m, or s + e - m for a tied group spanning positions [s, e).
    """
    m = order.size
    centred = np.arange(1 - m, m, 2, dtype=np.int32 if m < 2**31 else np.int64)
    first, size = _tied_runs(new_group)
    if first.size:
        _fill_tied_runs(centred, first, size, 2 * first + size - m)
        norm = math.sqrt(float(np.einsum("i,i->", centred, centred, dtype=np.float64)))
    else:
        norm = math.sqrt((m**3 - m) // 3)  # sum of (2k + 1 - m)^2 over k < m, exact in Python integers
    out = np.empty(m, dtype=centred.dtype)
    out[order] = centred
    return out, norm


# Float32 similarities t with |t| below this are the only ones for which 1 - t may round in float64.
_ROUNDING_BAND = 2.0**-28


def _descending_float32_keys(t: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """int32 keys that order float32 values from largest to smallest as signed integers, equal iff the
    values are equal (-0.0 and 0.0 share a key); written into out (which may be a strided view) if given."""
    if out is None:
        out = np.empty(t.shape, dtype=np.int32)
    np.subtract(np.float32(0.0), t, out=out.view(np.float32))  # 0 - t orders as -t and has no -0.0
    _flip_negative_magnitudes(out)
    return out


def _flip_negative_magnitudes(bits: np.ndarray) -> None:
    """IEEE float32 bits <-> signed integers in the same order: negative floats flip their magnitude bits.

    The map is its own inverse, which is how _float32_values_of_keys recovers values from keys."""
    flip = np.right_shift(bits, np.int32(31))
    np.bitwise_and(flip, np.int32(0x7FFFFFFF), out=flip)
    np.bitwise_xor(bits, flip, out=bits)


def _float32_values_of_keys(keys: np.ndarray) -> np.ndarray:
    """The float32 values t that _descending_float32_keys turned into these keys (0.0 for -0.0)."""
    bits = np.array(keys, dtype=np.int32)
    _flip_negative_magnitudes(bits)
    return np.negative(bits.view(np.float32))


# Positions of the low and high 32-bit words inside an int64, as seen through an int32 view.
_LOW, _HIGH = (0, 1) if sys.byteorder == "little" else (1, 0)


def _indexed_key_slots(m: int) -> tuple[np.ndarray, np.ndarray]:
    """(packed, keys): m int64s whose low words hold their own index 0..m-1, and the view of their high
    words, where the caller writes each value's 32-bit order key."""
    packed = np.arange(m, dtype=np.int64)
    return packed, packed.view(np.int32).reshape(m, 2)[:, _HIGH]


def _ranks_of_float32_keys(packed: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, float]:
    """_centred_ranks of the values 1 - t in float64, from _indexed_key_slots filled with the keys of t.

    The int64s are sorted as plain integers (one vectorised sort, no argsort); the sorted keys and the
    sorted order are then just their two words, and the int64s themselves become the order (no further
    large array). Descending t is ascending 1 - t, and for float32 t that map is exact in float64
    (rdm()'s values) except in a narrow band around t = 0, where distinct t may round to the same 1 - t:
    ties there are decided from the float64 values themselves. So the ranks, ties included, are exactly
    those of rdm()'s float64 values.
    """
    packed.sort()
    new_group = _group_starts(keys)
    band_edges = _descending_float32_keys(np.array([_ROUNDING_BAND, -_ROUNDING_BAND], dtype=np.float32))
    lo = int(np.searchsorted(keys, band_edges[0], side="right"))
    hi = int(np.searchsorted(keys, band_edges[1], side="left"))
    if hi - lo > 1:  # 1 - t in float64 for the (rare) values in the band decides their ties
        one_minus = 1.0 - _float32_values_of_keys(keys[lo:hi]).astype(np.float64)
        np.not_equal(one_minus[1:], one_minus[:-1], out=new_group[lo + 1:hi])
    np.bitwise_and(packed, np.int64(0xFFFFFFFF), out=packed)  # now the sorted order
    return _centred_ranks(packed.astype(np.intp, copy=False), new_group)


def _spearman_ranks_of_unit_rows(z: Tensor) -> tuple[np.ndarray, float] | None:
    """_centred_ranks of the RDM 1 - z z^T of float32 unit rows z on the CPU (None beyond 2^31 values).

    Each block of products is turned into keys while it is fresh and copied straight into the sort's
    slots: no separate RDM array.
    """
    n = z.shape[0]
    m = n * (n - 1) // 2
    if m >= 2**31:
        return None
    packed, keys = _indexed_key_slots(m)
    _upper_strips(z, lambda rows, cols, block: _descending_float32_keys(block.numpy()), out=keys)
    return _ranks_of_float32_keys(packed, keys)


def _spearman_ranks_float64(v: np.ndarray) -> tuple[np.ndarray, float]:
    """_centred_ranks of float64 values (the general route)."""
    order, ordered = _argsort(v)
    new_group = _group_starts(ordered)
    del ordered
    return _centred_ranks(order, new_group)


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


class Comparable(NamedTuple):
    """One RDM in the form its comparison needs. Spearman and Pearson: rho(a, b) = <a.values, b.values> /
    (a.norm b.norm) (integer centred ranks or standardised values); Kendall: the raw RDM (norm unused)."""

    values: Tensor
    norm: float


def _comparable(x: Tensor, metric: str, compare: str, name: str) -> Comparable:
    """One side's RDM in the form its comparison needs (see Comparable)."""
    z, transform = _rdm_rows(x, metric, name)
    if compare == "spearman" and transform is None and z.device.type == "cpu" and z.dtype == torch.float32:
        ranks = _spearman_ranks_of_unit_rows(z)
        if ranks is not None:
            return Comparable(torch.from_numpy(ranks[0]), ranks[1])
    return _prepared(_upper_strips(z, transform), transform is None, compare)


def _prepared(values: Tensor, one_minus: bool, compare: str) -> Comparable:
    """_comparable's second half, from _rdm_parts' output (CPU work in numpy, which releases the GIL)."""
    if one_minus:
        values = values.to(torch.float64).neg_().add_(1.0)
    if compare == "spearman" and values.device.type == "cpu":
        ranks = _spearman_ranks_float64(np.ascontiguousarray(values.numpy()))
        return Comparable(torch.from_numpy(ranks[0]), ranks[1])
    if compare == "kendall_tau_a":
        return Comparable(values, 1.0)
    return Comparable(standardised(average_ranks(values) if compare == "spearman" else values), 1.0)


def correlate(a: Comparable, b: Comparable, compare: str) -> float:
    """The second-level correlation of two Comparables (0 when either RDM is constant)."""
    if compare == "kendall_tau_a":
        return kendall_tau_a(a.values, b.values)
    if a.norm == 0 or b.norm == 0:
        return 0.0
    if a.values.device.type == "cpu":
        inner = float(np.einsum("i,i->", a.values.numpy(), b.values.numpy(), dtype=np.float64))
    else:
        inner = float(torch.dot(a.values.to(torch.float64), b.values.to(torch.float64)))
    return inner / (a.norm * b.norm)


def rsa_similarity(x: Tensor, y: Tensor, *, rdm_metric: str = "correlation",
                   compare: str = "spearman") -> float:
    """RSA similarity of two representations of the same examples: correlation of their RDMs (1 = same).

    For large N on a CPU with several threads, x's and y's RDMs are built and ranked in two threads at
    once, one BLAS thread each (the products, numpy's sorts and scatters all release the GIL): that keeps
    both cores busy where one threaded product after the other cannot. (BLAS may round a float32 product
    differently with another thread count, so this value equals Spearman of rdm()'s values computed with one
    thread exactly, and with more threads to ~1e-9.)
    """
    check_choice("RDM metric", rdm_metric, RDM_METRICS)
    check_choice("RDM comparison", compare, COMPARISONS)
    x, y = as_pair(x, y, min_examples=3)
    concurrent = (x.shape[0] >= _CONCURRENT_MIN_N and compare == "spearman" and x.device.type == "cpu"
                  and torch.get_num_threads() > 1)
    if concurrent:
        with one_blas_thread(), ThreadPoolExecutor(max_workers=1) as pool:
            future = pool.submit(_comparable, y, rdm_metric, compare, "y")
            a = _comparable(x, rdm_metric, compare, "x")
            b = future.result()
    else:
        a, b = _comparable(x, rdm_metric, compare, "x"), _comparable(y, rdm_metric, compare, "y")
    return correlate(a, b, compare)


def rsa_dissimilarity(x: Tensor, y: Tensor, *, rdm_metric: str = "correlation",
                      compare: str = "spearman") -> float:
    """1 - rsa_similarity: the MAML paper's second-level dissimilarity (0 = identical geometry)."""
    return 1.0 - rsa_similarity(x, y, rdm_metric=rdm_metric, compare=compare)
