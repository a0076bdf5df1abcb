"""Inner-loop engines for MAML/ANIL: one interface, a per-task loop and a vectorised (vmap) variant.

An engine turns a meta-batch of tasks and the meta-parameters into the meta-gradient (summed over
the batch's tasks, so that data-parallel ranks can add their shards and divide by the global
count) and into per-task query losses/accuracies. What is adapted, with which learning rates and
how the network computes is described by an :class:`InnerLoop`; the engines only decide how tasks
are scheduled:

- :class:`LoopEngine` adapts task after task with ``torch.autograd.grad`` on fast-weight dicts and
  takes the meta-gradient of each task before the next one starts, so memory holds one task's
  graph. On CPU this is the fastest choice (vmap's grouped convolutions are slower there).
- :class:`VmapEngine` adapts all tasks at once with ``torch.func.grad`` under ``torch.func.vmap``:
  fewer, larger kernels for GPUs, at B times the memory. Its network must use the elementary
  batch norm (see ``modules/nets/functional.py``) for exact second-order meta-gradients.

Both are checked against learn2learn's MAML in float64 in ``tests/modules/test_maml_engines.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from analysis.errors import did_you_mean
from modules.nets.functional import FunctionalConv4

Params = Mapping[str, torch.Tensor]
LearningRates = Mapping[str, torch.Tensor | float]


@dataclass(frozen=True)
class TaskBatch:
    """A meta-batch of B tasks: ``support_x [B, S, C, H, W]``, ``support_y [B, S]``, ``query_x [B, Q, C, H, W]``,
    ``query_y [B, Q]``."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor

    def __post_init__(self) -> None:
        sizes = {t.shape[0] for t in (self.support_x, self.support_y, self.query_x, self.query_y)}
        if len(sizes) != 1:
            raise ValueError(f"support/query tensors disagree on the number of tasks (leading sizes {sizes}); "
                             "stack the same tasks in all four tensors")
        if self.support_x.dim() < 3 or self.support_y.dim() != 2:
            raise ValueError(f"expected support_x [B, S, ...] and support_y [B, S], got "
                             f"{tuple(self.support_x.shape)} and {tuple(self.support_y.shape)}")

    def __len__(self) -> int:
        return self.support_x.shape[0]

    def task(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.support_x[index], self.support_y[index], self.query_x[index], self.query_y[index]

    def shard(self, rank: int, world_size: int) -> TaskBatch:
        """This rank's tasks (a strided slice), so that ``world_size`` ranks together cover the batch."""
        pick = slice(rank, None, world_size)
        return TaskBatch(self.support_x[pick], self.support_y[pick], self.query_x[pick], self.query_y[pick])

    @classmethod
    def from_batch(cls, batch: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]) -> TaskBatch:
        """Accept a dict with ``support_x/support_y/query_x/query_y`` keys or a 4-tuple in that order."""
        if isinstance(batch, TaskBatch):
            return batch
        if isinstance(batch, Mapping):
            keys = ("support_x", "support_y", "query_x", "query_y")
            missing = [k for k in keys if k not in batch]
            if missing:
                raise KeyError(f"meta-batch lacks {missing}; a FewShotDataModule batch has keys {keys}")
            return cls(*(batch[k] for k in keys))
        if len(batch) != 4:
            raise ValueError("a meta-batch tuple must be (support_x, support_y, query_x, query_y), "
                             f"got {len(batch)} items")
        return cls(*batch)


@dataclass
class MetaStep:
    """An engine's answer for one meta-batch: meta-gradient summed over tasks, and per-task metrics."""

    grad_sum: dict[str, torch.Tensor]
    task_losses: torch.Tensor  # [B], detached
    task_accuracies: torch.Tensor  # [B]

    @property
    def num_tasks(self) -> int:
        return self.task_losses.shape[0]


class InnerLoop:
    """What the inner loop adapts and how: network, adapted parameter names, learning rates, steps.

    ``adapted`` names a subset of the network's parameters (all of them for MAML, the head's for
    ANIL). When only head parameters are adapted, the body's features are computed once per task and
    the inner steps run on the head alone: the body is provably unchanged by the inner loop.
    """

    def __init__(self, model: FunctionalConv4, adapted: Sequence[str]) -> None:
        unknown = [n for n in adapted if n not in model.param_names]
        if unknown:
            hint = did_you_mean(unknown[0], model.param_names)
            raise KeyError(f"cannot adapt unknown parameter {unknown[0]!r}." + (hint or f" Known: {model.param_names}"))
        if not adapted:
            raise ValueError("the inner loop adapts no parameter; "
                             "pass the names to adapt (all for MAML, the head's for ANIL)")
        self.model = model
        self.adapted = tuple(adapted)
        self.head_only = set(self.adapted) <= set(model.head_names)

    # -- one task -------------------------------------------------------------------------------
    def _step(self, fast: dict[str, torch.Tensor], grads: Sequence[torch.Tensor],
              lrs: LearningRates) -> dict[str, torch.Tensor]:
        new = dict(fast)
        for name, g in zip(self.adapted, grads):
            new[name] = fast[name] - lrs[name] * g
        return new

    def adapt(self, params: Params, lrs: LearningRates, support_x: torch.Tensor, support_y: torch.Tensor,
              steps: int, create_graph: bool, record: Sequence[int] = ()) -> tuple[dict, dict[int, dict]]:
        """Adapt one task: ``steps`` gradient steps on the support loss, with ``torch.autograd.grad``.

        Returns the fast weights after the last step and, for each step in ``record``, the fast
        weights (detached) at that step (0 = before adaptation). ``create_graph`` keeps the
        second-order path to ``params`` (and to learned ``lrs``); without it the inner gradients
        are constants (first-order MAML), yet the fast weights still depend on ``params`` and ``lrs``.
        """
        fast = dict(params)
        snapshots: dict[int, dict] = {}
        features = self.model.body(params, support_x) if self.head_only else None
        for step in range(steps + 1):
            if step in record:
                snapshots[step] = {k: v.detach() for k, v in fast.items()}
            if step == steps:
                break
            logits = (self.model.head(fast, features) if self.head_only else self.model(fast, support_x))
            loss = F.cross_entropy(logits, support_y)
            grads = torch.autograd.grad(loss, [fast[n] for n in self.adapted], create_graph=create_graph,
                                        retain_graph=create_graph)
            fast = self._step(fast, grads, lrs)
        return fast, snapshots

    def query_loss(self, params: Params, lrs: LearningRates, support_x: torch.Tensor, support_y: torch.Tensor,
                   query_x: torch.Tensor, query_y: torch.Tensor, steps: int,
                   create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Query loss (differentiable w.r.t. ``params``) and accuracy of one task after adaptation."""
        fast, _ = self.adapt(params, lrs, support_x, support_y, steps, create_graph)
        logits = self.model(fast, query_x)
        loss = F.cross_entropy(logits, query_y)
        accuracy = (logits.detach().argmax(-1) == query_y).float().mean()
        return loss, accuracy


def meta_leaves(params: Params, lrs: LearningRates) -> dict[str, torch.Tensor]:
    """Every tensor that receives a meta-gradient: parameters and learned inner learning rates."""
    leaves = {name: p for name, p in params.items() if p.requires_grad}
    for name, lr in lrs.items():
        if isinstance(lr, torch.Tensor) and lr.requires_grad:
            leaves[f"inner_lr:{name}"] = lr
    return leaves


def _zeros_like_none(grads: Sequence[torch.Tensor | None], leaves: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves)]


class LoopEngine:
    """Tasks one after another; each task's meta-gradient is taken before the next task starts.

    On CPU the tasks can be spread over ``workers`` threads (task ``i`` goes to worker
    ``i % workers``; each worker sums its own tasks' meta-gradients in order, and the worker sums
    are added in worker order, so the result does not depend on thread timing). While workers run,
    torch's intra-op pool is set to one thread: independent tasks use two cores better than one
    small convolution split in two. ``workers=None`` takes ``torch.get_num_threads()``. Memory holds
    one task's graph per worker.
    """

    name = "loop"

    def __init__(self, workers: int | None = None) -> None:
        if workers is not None and workers < 1:
            raise ValueError(f"workers={workers}: use at least 1 (or None for one per intra-op thread)")
        self.workers = workers
        self._pool: ThreadPoolExecutor | None = None

    def __getstate__(self) -> dict:  # thread pools do not pickle (ddp_spawn pickles the module)
        return {**self.__dict__, "_pool": None}

    def close(self) -> None:
        """Shut the task threads down (a later meta-step starts new ones)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _num_workers(self, batch: TaskBatch) -> int:
        if batch.support_x.device.type != "cpu":
            return 1
        wanted = self.workers if self.workers is not None else torch.get_num_threads()
        return max(1, min(wanted, len(batch)))

    def _map(self, work: Callable[[list[int]], Any], batch: TaskBatch) -> list[Any]:
        """``work(indices)`` for each worker's share of the tasks, in worker order."""
        workers = self._num_workers(batch)
        shares = [list(range(w, len(batch), workers)) for w in range(workers)]
        if workers == 1:
            return [work(shares[0])]
        if self._pool is None or self._pool._max_workers < workers:
            self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="maml-task")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return list(self._pool.map(work, shares))
        finally:
            torch.set_num_threads(threads)

    @staticmethod
    def _ordered(results: list[tuple[Any, list[int], list[torch.Tensor], list[torch.Tensor]]],
                 num_tasks: int) -> tuple[torch.Tensor, torch.Tensor]:
        losses: list[torch.Tensor | None] = [None] * num_tasks
        accuracies: list[torch.Tensor | None] = [None] * num_tasks
        for _, indices, task_losses, task_accuracies in results:
            for i, loss, acc in zip(indices, task_losses, task_accuracies):
                losses[i], accuracies[i] = loss, acc
        return torch.stack(losses), torch.stack(accuracies)

    def meta_step(self, inner: InnerLoop, params: Params, lrs: LearningRates, batch: TaskBatch,
                  steps: int, first_order: bool) -> MetaStep:
        leaves = meta_leaves(params, lrs)
        names, tensors = list(leaves), list(leaves.values())

        def work(indices: list[int]):
            with torch.enable_grad():
                grad_sum = [torch.zeros_like(t) for t in tensors]
                losses, accuracies = [], []
                for index in indices:
                    loss, accuracy = inner.query_loss(params, lrs, *batch.task(index), steps=steps,
                                                      create_graph=not first_order)
                    grads = torch.autograd.grad(loss, tensors, allow_unused=True)
                    for total, g in zip(grad_sum, _zeros_like_none(grads, tensors)):
                        total.add_(g)
                    losses.append(loss.detach())
                    accuracies.append(accuracy)
            return grad_sum, indices, losses, accuracies

        results = self._map(work, batch)
        grad_sum = results[0][0]
        for other in results[1:]:
            for total, g in zip(grad_sum, other[0]):
                total.add_(g)
        losses, accuracies = self._ordered(results, len(batch))
        return MetaStep(dict(zip(names, grad_sum)), losses, accuracies)

    def evaluate(self, inner: InnerLoop, params: Params, lrs: LearningRates, batch: TaskBatch,
                 steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-task query loss and accuracy after ``steps`` first-order adaptation steps (no meta-gradient)."""
        detached = {k: v.detach().requires_grad_(k in inner.adapted) for k, v in params.items()}
        plain_lrs = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in lrs.items()}

        def work(indices: list[int]):
            losses, accuracies = [], []
            with torch.enable_grad():
                for index in indices:
                    loss, accuracy = inner.query_loss(detached, plain_lrs, *batch.task(index), steps=steps,
                                                      create_graph=False)
                    losses.append(loss.detach())
                    accuracies.append(accuracy)
            return None, indices, losses, accuracies

        return self._ordered(self._map(work, batch), len(batch))


class VmapEngine:
    """All tasks at once: ``torch.func.grad`` for the inner loop under ``torch.func.vmap`` over tasks."""

    name = "vmap"

    def close(self) -> None:
        """Nothing to shut down (no threads of its own)."""

    def _task_fn(self, inner: InnerLoop, params: Params, lrs: LearningRates, steps: int,
                 first_order: bool) -> Callable:
        model = inner.model

        def task(support_x, support_y, query_x, query_y):
            fast = dict(params)
            features = model.body(params, support_x) if inner.head_only else None

            def support_loss(adapted: dict[str, torch.Tensor], frozen: dict[str, torch.Tensor]) -> torch.Tensor:
                merged = {**frozen, **adapted}
                logits = model.head(merged, features) if inner.head_only else model(merged, support_x)
                return F.cross_entropy(logits, support_y)

            for _ in range(steps):
                adapted = {n: fast[n] for n in inner.adapted}
                grads = torch.func.grad(support_loss)(adapted, fast)
                if first_order:
                    grads = {n: g.detach() for n, g in grads.items()}
                fast = inner._step(fast, [grads[n] for n in inner.adapted], lrs)
            logits = model(fast, query_x)
            loss = F.cross_entropy(logits, query_y)
            accuracy = (logits.argmax(-1) == query_y).float().mean()
            return loss, accuracy

        return task

    def meta_step(self, inner: InnerLoop, params: Params, lrs: LearningRates, batch: TaskBatch,
                  steps: int, first_order: bool) -> MetaStep:
        _require_elementary_norm(inner)
        leaves = meta_leaves(params, lrs)
        names, tensors = list(leaves), list(leaves.values())
        task = self._task_fn(inner, params, lrs, steps, first_order)
        losses, accuracies = torch.func.vmap(task)(batch.support_x, batch.support_y, batch.query_x, batch.query_y)
        grads = torch.autograd.grad(losses.sum(), tensors, allow_unused=True)
        return MetaStep(dict(zip(names, _zeros_like_none(grads, tensors))), losses.detach(), accuracies.detach())

    def evaluate(self, inner: InnerLoop, params: Params, lrs: LearningRates, batch: TaskBatch,
                 steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        _require_elementary_norm(inner)
        detached = {k: v.detach() for k, v in params.items()}
        plain_lrs = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in lrs.items()}
        task = self._task_fn(inner, detached, plain_lrs, steps, first_order=True)
        with torch.enable_grad():
            losses, accuracies = torch.func.vmap(task)(batch.support_x, batch.support_y,
                                                       batch.query_x, batch.query_y)
        return losses.detach(), accuracies.detach()


def _require_elementary_norm(inner: InnerLoop) -> None:
    if inner.model.norm and inner.model.batch_norm != "elementary":
        raise ValueError("the vmap engine needs the elementary batch norm (native batch norm gives wrong "
                         "second-order gradients under vmap); build FunctionalConv4(net, batch_norm='elementary')")
    if inner.model.channels_last:
        raise ValueError("vmap cannot change memory formats; build FunctionalConv4(net, channels_last=False) "
                         "for the vmap engine (functional_options('vmap') gives the right options)")


ENGINES = {"loop": LoopEngine, "vmap": VmapEngine}


def make_engine(name: str, device: torch.device | str | None = None) -> LoopEngine | VmapEngine:
    """An engine by name; ``"auto"`` picks the loop on CPU and vmap on CUDA."""
    if name == "auto":
        name = "vmap" if torch.device(device or "cpu").type == "cuda" else "loop"
    if name not in ENGINES:
        raise ValueError(f"unknown inner-loop engine {name!r}.{did_you_mean(name, [*ENGINES, 'auto'])} "
                         f"Fix: choose from {sorted(ENGINES)} or 'auto'")
    return ENGINES[name]()


def functional_options(engine: str, device: torch.device | str | None = None) -> dict[str, Any]:
    """``FunctionalConv4`` options an engine needs: the loop runs native batch norm on NHWC tensors,
    vmap the elementary batch norm on NCHW tensors."""
    if make_engine(engine, device).name == "vmap":
        return {"batch_norm": "elementary", "channels_last": False}
    return {"batch_norm": "native", "channels_last": True}
