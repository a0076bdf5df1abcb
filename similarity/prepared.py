"""Linear CKA against fixed references, each reference layer prepared once.

References (the start of fine-tuning, a random-init network, another run) often stay fixed while many
representations are compared with them, yet ``similarity_matrix`` would centre them and build their
Gram matrices again at every call. ``prepare_reference(references)`` keeps, per reference layer, what
``similarity_matrix`` computes for it (the centred features, the N x N Gram matrix when the planner
picks one for these shapes, the self term and the row norms), so each later comparison pays only for
its own layers and the cross terms. The values are those of ``similarity_matrix`` (tested to 1e-12):
the same centring, blocked float64-reduced products, Gram planner, debiasing and ratio.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from similarity._blocks import cross_feature_sq, dot64, edges, gram, self_sq, sq64
from similarity._inputs import SimilarityInputError, as_matrix, centre, check_choice, compute_dtype
from similarity.cka import _ratio, debias
from similarity.matrix import _plan_grams

PREPARED_MEASURES = ("linear_cka", "linear_cka_debiased")


@dataclass
class _Layer:
    """A centred layer: features (kept when no Gram), Gram matrix or None, self term, row norms."""

    centred: Tensor | None
    gram: Tensor | None
    self_term: float
    row_sq: Tensor


def _prepare(x: Tensor, dtype: torch.dtype, with_gram: bool, name: str) -> _Layer:
    xc, row_sq = centre(x, dtype, name)
    if with_gram:
        g = gram(xc)
        return _Layer(centred=None, gram=g, self_term=sq64(g), row_sq=row_sq)
    return _Layer(centred=xc, gram=None, self_term=self_sq(xc), row_sq=row_sq)


def _identity(t: Tensor) -> tuple:
    """Same memory, shape, strides and dtype: the same tensor (as ``similarity_matrix`` tells them apart)."""
    return t.device, t.data_ptr(), tuple(t.shape), t.stride(), t.dtype


def _cross(a: _Layer, b: _Layer, n: int) -> float:
    if a.gram is not None and b.gram is not None:
        return sum(dot64(a.gram[r0:r1], b.gram[r0:r1]) for r0, r1 in edges(n, 1024))
    if a.centred is None or b.centred is None:  # one side has only its Gram: form the other's
        ga = a.gram if a.gram is not None else gram(a.centred)
        gb = b.gram if b.gram is not None else gram(b.centred)
        return sum(dot64(ga[r0:r1], gb[r0:r1]) for r0, r1 in edges(n, 1024))
    return cross_feature_sq(a.centred, b.centred)


class PreparedReference:
    """Fixed reference layers prepared once for linear CKA (biased or debiased HSIC) with other layers.

    Build it with ``prepare_reference``. ``matrix(current)`` returns the [len(current), len(references)]
    float64 matrix, the same values as ``similarity_matrix(current, references, measure)``;
    ``similarity(y)`` the single value of one tensor against one reference layer. The plan (which
    layers get a Gram matrix) is made at the first call from the current and reference widths, as
    ``similarity_matrix`` plans it, and kept while the current layers keep their widths.
    """

    def __init__(self, references: Mapping[str, Tensor], measure: str = "linear_cka") -> None:
        if not isinstance(references, Mapping) or not references:
            raise SimilarityInputError("prepare_reference needs at least one reference layer: pass a [N, ...] "
                                       "tensor or a non-empty mapping layer name -> [N, ...] tensor.")
        self.measure = check_choice("prepared measure", measure, PREPARED_MEASURES)
        self.names = [str(k) for k in references]
        self.references = [as_matrix(t, f"references[{k!r}]") for k, t in references.items()]
        counts = {t.shape[0] for t in self.references}
        if len(counts) != 1:
            raise SimilarityInputError(f"reference layers hold different numbers of examples {sorted(counts)}; "
                                       "compute every reference on the same probe set.")
        self.n = counts.pop()
        self.debiased = measure == "linear_cka_debiased"
        self._plan: tuple[tuple[int, ...], torch.dtype] | None = None
        self._current_grams: set[int] = set()
        self._prepared: list[_Layer] = []

    def _ensure_plan(self, current: list[Tensor]) -> None:
        dtype = compute_dtype(*current, *self.references)
        key = (tuple(t.shape[1] for t in current), dtype)
        if self._plan == key:
            return
        widths = [t.shape[1] for t in current] + [t.shape[1] for t in self.references]
        k = len(current)
        pairs = {(a, k + b) for a in range(k) for b in range(len(self.references))}
        grams = _plan_grams(self.n, widths, pairs, torch.finfo(dtype).bits // 8)
        self._current_grams = {u for u in grams if u < k}
        self._prepared = [_prepare(t, dtype, k + b in grams, f"references[{self.names[b]!r}]")
                          for b, t in enumerate(self.references)]
        self._plan = key

    def matrix(self, current: Mapping[str, Tensor]) -> Tensor:
        """[L_current, L_reference] float64 CKA matrix (rows in the order of ``current``)."""
        if not isinstance(current, Mapping):
            raise SimilarityInputError(f"current must be a mapping layer name -> [N, ...] tensor, got "
                                       f"{type(current).__name__}; for one tensor use similarity(y).")
        tensors = [as_matrix(t, f"current[{k!r}]") for k, t in current.items()]
        if not tensors:
            raise SimilarityInputError("current must hold at least one layer.")
        if {t.shape[0] for t in tensors} != {self.n}:
            raise SimilarityInputError(f"current layers hold {sorted({t.shape[0] for t in tensors})} examples, "
                                       f"the references {self.n}; snapshot the same probe set.")
        self._ensure_plan(tensors)
        assert self._plan is not None
        dtype = self._plan[1]
        same = {_identity(t): j for j, t in enumerate(self.references)}
        rows = [_prepare(t, dtype, i in self._current_grams, f"current[{name!r}]")
                for i, (name, t) in enumerate(zip(current, tensors))]
        out = torch.empty(len(rows), len(self._prepared), dtype=torch.float64)
        for i, a in enumerate(rows):
            itself = same.get(_identity(tensors[i]))  # a reference tensor itself (the start, at fit start)
            for j, b in enumerate(self._prepared):
                xy = a.self_term if j == itself else _cross(a, b, self.n)
                xx, yy = a.self_term, b.self_term
                if self.debiased:
                    xy = debias(xy, a.row_sq, b.row_sq, self.n)
                    xx = debias(xx, a.row_sq, a.row_sq, self.n)
                    yy = debias(yy, b.row_sq, b.row_sq, self.n)
                out[i, j] = _ratio(xy, xx, yy)
        return out

    def similarity(self, y: Tensor, reference: str | None = None) -> float:
        """The measure of ``y`` [N, ...] with one reference layer (``reference``: its name; may be left
        out when there is only one), as ``get_measure(self.measure)(y, references[reference])`` gives it."""
        if reference is None:
            if len(self.names) != 1:
                raise SimilarityInputError(f"this prepared reference holds {len(self.names)} layers "
                                           f"({', '.join(self.names)}); pass reference=<one of them>.")
            column = 0
        else:
            column = self.names.index(check_choice("reference layer", reference, self.names))
        return float(self.matrix({"y": y})[0, column])


def prepare_reference(reference: Tensor | Mapping[str, Tensor], measure: str = "linear_cka") -> PreparedReference:
    """Prepare fixed reference representations once for repeated ``measure`` comparisons.

    ``reference``: one [N, ...] tensor (its layer is named "reference") or a mapping layer name ->
    [N, ...] tensor, all on the same N examples. ``measure``: one of PREPARED_MEASURES.
    """
    references = {"reference": reference} if isinstance(reference, Tensor) else reference
    return PreparedReference(references, measure)
