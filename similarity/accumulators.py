"""Streaming exact linear CKA as a torchmetrics Metric: batch by batch, O(D^2) memory, DDP-mergeable.

Linear CKA depends on the data only through n, sum x, sum y, X^T X, Y^T Y and X^T Y, so summing
these over batches (in float64) and centring at the end gives exactly the full-data value, for any
batch split and across processes: every state is a sum (dist_reduce_fx="sum"), so torchmetrics'
DDP sync and merge_state combine ranks correctly. The debiased estimator also needs the row norms of
the centred data; they expand into a few more sums (sum |x|^2, sum |x|^2 |y|^2, sum |x|^2 x, ...).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from similarity._inputs import SimilarityInputError, as_pair, check_finite

_F64 = torch.float64
_SCALARS_DEBIASED = ("sum_aa", "sum_bb", "sum_ab", "sum_a", "sum_b")


class LinearCKAAccumulator(Metric):
    """Exact linear CKA (biased HSIC, or debiased with debiased=True) of all examples seen so far.

    update(x, y) takes a batch of paired representations [B, ...]; compute() returns the CKA of
    everything accumulated (on all DDP ranks) as a float64 scalar tensor. dim_x / dim_y (flattened
    widths) may be given up front; they are required under DDP when a rank may see no batch at all.
    Memory: (Dx + Dy)^2 float64 numbers (134 MB for Dx = Dy = 2,048). Cost per batch: B (Dx + Dy)^2
    float64 multiply-adds.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, dim_x: int | None = None, dim_y: int | None = None, *, debiased: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.debiased = debiased
        self.add_state("n", torch.zeros((), dtype=_F64), dist_reduce_fx="sum")
        for name, shape in (("sum_x", (dim_x,)), ("sum_y", (dim_y,)), ("xtx", (dim_x, dim_x)),
                            ("yty", (dim_y, dim_y)), ("xty", (dim_x, dim_y))):
            self.add_state(name, self._zeros(shape), dist_reduce_fx="sum")
        if debiased:
            for name in _SCALARS_DEBIASED:
                self.add_state(name, torch.zeros((), dtype=_F64), dist_reduce_fx="sum")
            for name, shape in (("ax", (dim_x,)), ("bx", (dim_x,)), ("ay", (dim_y,)), ("by", (dim_y,))):
                self.add_state(name, self._zeros(shape), dist_reduce_fx="sum")

    @staticmethod
    def _zeros(shape: tuple[int | None, ...]) -> Tensor:
        """Zeros of the shape, or an empty placeholder (filled at the first update) if a width is unknown."""
        if any(s is None for s in shape):
            return torch.zeros(0, dtype=_F64)
        return torch.zeros(shape, dtype=_F64)

    def _ensure_widths(self, dx: int, dy: int, device: torch.device) -> None:
        widths = {"sum_x": (dx,), "sum_y": (dy,), "xtx": (dx, dx), "yty": (dy, dy), "xty": (dx, dy)}
        if self.debiased:
            widths.update(ax=(dx,), bx=(dx,), ay=(dy,), by=(dy,))
        for name, shape in widths.items():
            state = getattr(self, name)
            if state.numel() == 0 and math.prod(shape) > 0:
                setattr(self, name, torch.zeros(shape, dtype=_F64, device=device))
            elif tuple(state.shape) != shape:
                raise SimilarityInputError(f"batch widths (x: {dx}, y: {dy}) differ from those accumulated "
                                           f"so far ({name} has shape {tuple(state.shape)}); feed every "
                                           "batch from the same layers, or call reset() first.")

    def _reduce_states(self, incoming_state: dict[str, Any]) -> None:
        """Sum states (forward() and merge_state()), where one side may still hold empty placeholders."""
        incoming_state = dict(incoming_state)
        for name in self._defaults:
            mine, theirs = getattr(self, name), incoming_state[name]
            if mine.numel() == 0 and theirs.numel() > 0:
                setattr(self, name, torch.zeros_like(theirs))
            elif theirs.numel() == 0 and mine.numel() > 0:
                incoming_state[name] = torch.zeros_like(mine)
        super()._reduce_states(incoming_state)

    def update(self, x: Tensor, y: Tensor) -> None:
        """Add a batch of paired examples (x[i] and y[i] describe the same input)."""
        x, y = as_pair(x, y, min_examples=1)
        x, y = x.to(device=self.n.device, dtype=_F64), y.to(device=self.n.device, dtype=_F64)
        self._ensure_widths(x.shape[1], y.shape[1], x.device)
        batch_x, batch_y = x.sum(0), y.sum(0)
        check_finite(batch_x, "x")
        check_finite(batch_y, "y")
        self.n += x.shape[0]
        self.sum_x += batch_x
        self.sum_y += batch_y
        self.xtx += x.T @ x
        self.yty += y.T @ y
        self.xty += x.T @ y
        if self.debiased:
            a, b = torch.einsum("ij,ij->i", x, x), torch.einsum("ij,ij->i", y, y)
            self.sum_a += a.sum()
            self.sum_b += b.sum()
            self.sum_aa += a @ a
            self.sum_bb += b @ b
            self.sum_ab += a @ b
            self.ax += a @ x
            self.bx += b @ x
            self.ay += a @ y
            self.by += b @ y

    def compute(self) -> Tensor:
        """CKA of all accumulated examples (NaN when a side is constant; needs n >= 4 when debiased)."""
        n = float(self.n)
        if n < (4 if self.debiased else 2):
            raise SimilarityInputError(f"LinearCKAAccumulator has seen {int(n)} examples; CKA needs at least "
                                       f"{4 if self.debiased else 2}. Call update() with more data first.")
        mx, my = self.sum_x / n, self.sum_y / n
        cxx = self.xtx - n * torch.outer(mx, mx)
        cyy = self.yty - n * torch.outer(my, my)
        cxy = self.xty - n * torch.outer(mx, my)
        xy, xx, yy = (float(torch.linalg.vector_norm(c)) ** 2 for c in (cxy, cxx, cyy))
        if self.debiased:
            xy, xx, yy = self._debiased_terms(n, mx, my, cxx, cyy, cxy, xy, xx, yy)
        denominator = math.sqrt(xx) * math.sqrt(yy) if xx > 0 and yy > 0 else 0.0
        return torch.tensor(xy / denominator if denominator > 0 else math.nan, dtype=_F64)

    def _debiased_terms(self, n: float, mx: Tensor, my: Tensor, cxx: Tensor, cyy: Tensor, cxy: Tensor,
                        xy: float, xx: float, yy: float) -> tuple[float, float, float]:
        """Song et al.'s correction from the sums: needs sum_i |u_i|^2 |v_i|^2 etc. for centred rows u, v."""
        cx, cy = float(mx @ mx), float(my @ my)
        trace_x, trace_y = float(self.sum_a) - n * cx, float(self.sum_b) - n * cy  # sum |u_i|^2, sum |v_i|^2
        # With a_i = |x_i|^2, p_i = x_i.mx (and b_i, q_i for y): |u_i|^2 = a_i - 2 p_i + cx. Sums of
        # p_i q_i, p_i^2 use the *uncentred* second moments: mx^T X^T Y my = mx^T (cxy + n mx my^T) my.
        pq = float(mx @ cxy @ my) + n * cx * cy
        pp = float(mx @ cxx @ mx) + n * cx * cx
        qq = float(my @ cyy @ my) + n * cy * cy
        uv = (float(self.sum_ab) - 2 * float(my @ self.ay) + cy * float(self.sum_a) - 2 * float(mx @ self.bx)
              + 4 * pq - 2 * cy * n * cx + cx * float(self.sum_b) - 2 * cx * n * cy + n * cx * cy)
        uu = (float(self.sum_aa) - 4 * float(mx @ self.ax) + 2 * cx * float(self.sum_a) + 4 * pp
              - 4 * cx * n * cx + n * cx * cx)
        vv = (float(self.sum_bb) - 4 * float(my @ self.by) + 2 * cy * float(self.sum_b) + 4 * qq
              - 4 * cy * n * cy + n * cy * cy)

        def correct(cross: float, diag_dot: float, tr_a: float, tr_b: float) -> float:
            return cross - n / (n - 2) * diag_dot + tr_a * tr_b / ((n - 1) * (n - 2))

        return (correct(xy, uv, trace_x, trace_y), correct(xx, uu, trace_x, trace_x),
                correct(yy, vv, trace_y, trace_y))
