"""Input checks and float64 centring shared by every measure.

Representations arrive as [N, ...] tensors (any float dtype, any device); the measures see [N, D]
matrices. Centring happens in float64 and the centred copy is cast back to the *compute dtype*
(float32 stays float32 so the big matrix products run at float32 speed; float64 stays float64).
Centring first is what keeps float32 products exact to ~1e-7: the large common offset of, e.g.,
post-ReLU features never enters a float32 product or a float32 cancellation.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor

# Rows per float64 chunk when centring: bounds the float64 temporaries to about 32 MB.
_CHUNK_BYTES = 32 * 2**20


class SimilarityInputError(ValueError):
    """Inputs a similarity measure cannot use; the message says what is wrong and how to fix it."""


class UnknownNameError(KeyError):
    """An unknown measure / metric / option name; the message suggests the closest known names."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """' Did you mean 'x'?' for the closest known names, or '' when none is close."""
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def check_choice(kind: str, value: str, choices: Iterable[str]) -> str:
    """Return value if it is one of choices, else raise UnknownNameError with a suggestion."""
    choices = list(choices)
    if value not in choices:
        raise UnknownNameError(f"unknown {kind} {value!r}.{did_you_mean(str(value), choices)} "
                               f"Use one of: {', '.join(choices)}.")
    return value


def as_matrix(x: Tensor, name: str = "x") -> Tensor:
    """[N, ...] -> [N, D] (a view when possible); rejects non-tensors, scalars and complex tensors.

    Finiteness is checked later, on the sums each measure computes anyway (check_finite).
    """
    if not isinstance(x, Tensor):
        raise SimilarityInputError(f"{name} must be a torch.Tensor [N, ...], got {type(x).__name__}; "
                                   f"convert it with torch.as_tensor({name}).")
    if x.dim() < 1 or x.shape[0] == 0:
        raise SimilarityInputError(f"{name} has shape {tuple(x.shape)}; pass representations as [N, ...] "
                                   "with one row per example (N >= 1).")
    if x.is_complex():
        raise SimilarityInputError(f"{name} is complex ({x.dtype}); pass real representations.")
    x = x.detach().reshape(x.shape[0], -1)
    if x.shape[1] == 0:
        raise SimilarityInputError(f"{name} has no features (shape {tuple(x.shape)}); pass [N, D], D >= 1.")
    return x


def check_finite(summary: Tensor, name: str) -> None:
    """Raise if a float64 summary (column sums, row norms) of an input is not finite.

    NaN/inf in an input always reach its sums, so checking the O(D) or O(N) summary that the measure
    computes anyway replaces a separate O(N D) pass over the data.
    """
    if not bool(torch.isfinite(summary).all()):
        raise SimilarityInputError(f"{name} contains NaN or infinite values; remove those examples or fix "
                                   "the activations that overflowed before comparing.")


def as_pair(x: Tensor, y: Tensor, *, min_examples: int = 2) -> tuple[Tensor, Tensor]:
    """Both inputs as [N, D] matrices on one device with the same number of examples N >= min_examples."""
    x, y = as_matrix(x, "x"), as_matrix(y, "y")
    if x.shape[0] != y.shape[0]:
        raise SimilarityInputError(f"x has {x.shape[0]} examples but y has {y.shape[0]}; both representations"
                                   " must be computed on the same examples in the same order.")
    if x.shape[0] < min_examples:
        raise SimilarityInputError(f"this measure needs at least {min_examples} examples, got {x.shape[0]}; "
                                   "compare on more examples.")
    if x.device != y.device:
        raise SimilarityInputError(f"x is on {x.device} but y is on {y.device}; move both to one device.")
    return x, y


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64 or not floating point; float32 otherwise (half types are promoted)."""
    if any(t.dtype == torch.float64 or not t.is_floating_point() for t in tensors):
        return torch.float64
    return torch.float32


def _rows_per_chunk(n_cols: int) -> int:
    return max(1, _CHUNK_BYTES // (8 * max(1, n_cols)))


def _numpy_view(x: Tensor) -> np.ndarray | None:
    """x as a numpy array sharing its memory when x is on the CPU in a dtype numpy has, else None.

    The elementwise float64 passes below run in numpy on the CPU: single-threaded and vectorised, they
    are several times faster than torch's threaded kernels for these short passes when other jobs
    share the cores (the threads wait for each other), and no slower on a quiet machine.
    """
    if x.device.type != "cpu" or x.dtype == torch.bfloat16 or x.is_conj() or x.is_neg():
        return None
    return x.numpy()


def column_mean64(x: Tensor) -> Tensor:
    """Column means of [N, D] accumulated in float64 (row chunks, no full float64 copy)."""
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    step = _rows_per_chunk(x.shape[1])
    for start in range(0, x.shape[0], step):
        part = x[start:start + step]
        view = _numpy_view(part)
        if view is not None:
            total.numpy()[:] += view.sum(0, dtype=np.float64)
        else:
            total += part.to(torch.float64).sum(0)
    return total / x.shape[0]


def centre(x: Tensor, dtype: torch.dtype, name: str = "x") -> tuple[Tensor, Tensor]:
    """Column-centred copy of [N, D] in dtype (centred in float64) and its row squared norms in float64.

    The row norms (= the diagonal of the centred Gram matrix) come from the float64 values, so the
    debiased estimators and RBF distances get them without float32 rounding.
    """
    mean = column_mean64(x)
    check_finite(mean, name)
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    row_sq = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    step = _rows_per_chunk(x.shape[1])
    mean_np = mean.numpy() if mean.device.type == "cpu" else None
    for start in range(0, x.shape[0], step):
        part = x[start:start + step]
        view = _numpy_view(part)
        if view is not None:
            chunk = view.astype(np.float64)  # a copy: the input is never modified
            chunk -= mean_np
            row_sq.numpy()[start:start + step] = np.einsum("ij,ij->i", chunk, chunk)
            out.numpy()[start:start + step] = chunk
            continue
        chunk = part.to(torch.float64) - mean
        row_sq[start:start + step] = torch.einsum("ij,ij->i", chunk, chunk)
        out[start:start + step] = chunk
    return out, row_sq


def normalise_rows(x: Tensor, dtype: torch.dtype, *, centre_first: bool, name: str = "x") -> Tensor:
    """Each row (minus its own mean when centre_first) scaled to unit norm, in float64, cast to dtype.

    Rows with zero norm after centring stay all-zero instead of becoming NaN.
    """
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    step = _rows_per_chunk(x.shape[1])
    for start in range(0, x.shape[0], step):
        part = x[start:start + step]
        view = _numpy_view(part)
        if view is not None:
            chunk = view.astype(np.float64)  # a copy: the input is never modified
            if centre_first:
                chunk -= chunk.mean(1, keepdims=True)
            norm = np.sqrt(np.einsum("ij,ij->i", chunk, chunk))[:, None]
            check_finite(torch.from_numpy(norm), name)
            chunk /= np.where(norm > 0, norm, 1.0)
            out.numpy()[start:start + step] = chunk
            continue
        chunk = part.to(torch.float64)
        if centre_first:
            chunk = chunk - chunk.mean(1, keepdim=True)
        norm = chunk.norm(dim=1, keepdim=True)
        check_finite(norm, name)
        out[start:start + step] = chunk / torch.where(norm > 0, norm, torch.ones_like(norm))
    return out
