"""Distances (0 = identical): orthogonal Procrustes between representations, l2 between weights."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from similarity._inputs import (
    SimilarityInputError,
    UnknownNameError,
    as_pair,
    centre,
    compute_dtype,
    did_you_mean,
)
from similarity._matmul import mm, singular_values


def _row_space(xc: Tensor) -> Tensor:
    """An N x N matrix with the same Gram matrix as the [N, D] xc (D > N): R^T from xc^T = Q R.

    Every measure that depends on the rows only through their inner products (Procrustes, CKA) is
    unchanged, and the D x D products shrink to N x N.
    """
    return torch.linalg.qr(xc.T, mode="r").R.T


def procrustes_distance(x: Tensor, y: Tensor) -> float:
    """Orthogonal Procrustes distance (Ding et al. 2021): min_Q ||X - Y Q||_F^2 = 2 - 2 ||X^T Y||_* in [0, 2].

    X and Y are the centred representations scaled to unit Frobenius norm, so the distance ignores
    translation, isotropic scaling and orthogonal transforms (of either side). The product X^T Y runs
    in the input dtype; its singular values are taken in float64. Rounding below 0 is reported as 0.
    NaN when a representation is constant across examples.
    """
    x, y = as_pair(x, y, min_examples=2)
    dtype = compute_dtype(x, y)
    xc, sq_x = centre(x, dtype, "x")
    yc, sq_y = centre(y, dtype, "y")
    norm_x, norm_y = math.sqrt(float(sq_x.sum())), math.sqrt(float(sq_y.sum()))
    if norm_x == 0 or norm_y == 0:
        return math.nan
    n = xc.shape[0]
    if xc.shape[1] > n:
        xc = _row_space(xc)
    if yc.shape[1] > n:
        yc = _row_space(yc)
    nuclear = float(singular_values(mm(xc.T, yc).to(torch.float64)).sum())
    return max(0.0, 2.0 - 2.0 * nuclear / (norm_x * norm_y))


def _floating_keys(state: Mapping[str, Tensor]) -> list[str]:
    return [k for k, v in state.items() if isinstance(v, Tensor) and v.is_floating_point()]


def weight_l2_distance(state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor],
                       keys: Iterable[str] | None = None) -> float:
    """Euclidean distance sqrt(sum_k ||a_k - b_k||^2) between two state dicts, accumulated in float64.

    keys=None compares every floating-point tensor (integer buffers such as BatchNorm's
    num_batches_tracked are skipped); both dicts must then hold the same floating-point keys.
    """
    if keys is None:
        keys_a, keys_b = _floating_keys(state_a), _floating_keys(state_b)
        only_a, only_b = sorted(set(keys_a) - set(keys_b)), sorted(set(keys_b) - set(keys_a))
        if only_a or only_b:
            raise UnknownNameError(f"the state dicts hold different floating-point tensors (only in state_a: "
                                   f"{only_a[:5]}, only in state_b: {only_b[:5]}); compare states of the same"
                                   " architecture or pass keys=[...] naming the tensors to compare.")
        keys = keys_a
    total = 0.0
    count = 0
    for key in keys:
        for name, state in (("state_a", state_a), ("state_b", state_b)):
            if key not in state:
                raise UnknownNameError(f"{key!r} is not in {name}.{did_you_mean(key, state.keys())} "
                                       "Pass keys that both state dicts hold.")
        a, b = state_a[key], state_b[key]
        if a.shape != b.shape:
            raise SimilarityInputError(f"{key!r} has shape {tuple(a.shape)} in state_a but {tuple(b.shape)} "
                                       "in state_b; compare one architecture's states or leave the key out")
        diff = a.detach().to(torch.float64) - b.detach().to(device=a.device, dtype=torch.float64)
        total += float(torch.dot(diff.reshape(-1), diff.reshape(-1)))
        count += 1
    if count == 0:
        raise SimilarityInputError("no tensors to compare (no floating-point tensors or keys=[]); pass state "
                                   "dicts of a model or name the keys to compare.")
    return math.sqrt(total)
