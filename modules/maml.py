"""MAML and ANIL as one LightningModule: the whole meta-batch inside ``training_step``.

Why manual optimisation: the meta-gradient is accumulated task by task (the loop engine keeps
one task's graph in memory at a time) and, under data parallelism, the tasks of one meta-batch
are split across ranks and the summed meta-gradients are all-reduced explicitly before a single
optimiser step. Lightning's automatic loop would need one loss holding every task's graph and
would let DDP's bucket hooks average per-rank *means* (wrong when ranks hold different numbers of
tasks). The engines take meta-gradients with ``torch.autograd.grad``, so DDP's hooks never fire;
the same meta-batch gives the same update on 1 process as on 2 (up to float summation order).

Everything that defines a run is a constructor argument (saved as hyperparameters):

- ``algorithm``: ``"maml"`` (inner loop on every parameter) or ``"anil"`` (head only);
- ``first_order``: first-order MAML (inner gradients treated as constants) or full second order;
- ``inner_steps`` / ``inner_steps_test``: inner steps in meta-training / at validation and test;
- ``inner_lr`` with ``inner_lr_mode``: ``"fixed"``, ``"per_layer"`` (one learned rate per parameter
  tensor) or ``"per_element"`` (Meta-SGD: a learned rate for every weight), initialised at ``inner_lr``;
- ``engine``: ``"loop"``, ``"vmap"`` or ``"auto"`` (loop on CPU, vmap on CUDA).

Batch norm is transductive (batch statistics of the support or query set, no running statistics),
as in MAML; the network is :class:`modules.nets.conv4.Conv4`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch import nn

from analysis.errors import did_you_mean
from modules.distributed import release_process_group_at_exit
from modules.meta_engines import InnerLoop, MetaStep, TaskBatch, functional_options, make_engine, meta_leaves
from modules.nets.conv4 import CONV4_LAYERS, Conv4
from modules.nets.functional import FunctionalConv4

ALGORITHMS = ("maml", "anil")
INNER_LR_MODES = ("fixed", "per_layer", "per_element")
ENGINE_NAMES = ("auto", "loop", "vmap")
DEFAULT_RECORD_STEPS = (0, 1, 5, 10)


class MAMLConfigError(ValueError):
    """A bad MAML setting; the message names the problem and the fix."""


def _check_choice(kind: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise MAMLConfigError(f"unknown {kind} {value!r}.{did_you_mean(value, choices)} "
                              f"Fix: use one of {', '.join(choices)}.")
    return value


def mean_ci95(values: torch.Tensor) -> tuple[float, float]:
    """Mean and half-width of the normal 95% confidence interval (1.96 standard errors)."""
    values = values.double().flatten()
    n = values.numel()
    if n == 0:
        return float("nan"), float("nan")
    std = values.std(unbiased=True).item() if n > 1 else float("nan")
    return values.mean().item(), 1.96 * std / math.sqrt(n)


class MAMLModule(L.LightningModule):
    """MAML / ANIL on a transductive-BN Conv4 with a pluggable inner-loop engine.

    Batches are meta-batches: a dict with ``support_x [B, ways*shots, C, H, W]``, ``support_y``,
    ``query_x``, ``query_y`` (or the same four as a tuple). ``shard_tasks=True`` means every rank
    receives the same meta-batch and keeps every ``world_size``-th task; set it to False when the
    data loader already gives each rank different tasks.
    """

    def __init__(
        self,
        ways: int = 5,
        *,
        in_channels: int = 1,
        image_size: int = 28,
        hidden: int = 64,
        algorithm: str = "maml",
        first_order: bool = False,
        inner_steps: int = 5,
        inner_steps_test: int = 10,
        inner_lr: float = 0.4,
        inner_lr_mode: str = "fixed",
        meta_lr: float = 1e-3,
        engine: str = "auto",
        shard_tasks: bool = True,
    ) -> None:
        super().__init__()
        _check_choice("algorithm", algorithm, ALGORITHMS)
        _check_choice("inner_lr_mode", inner_lr_mode, INNER_LR_MODES)
        _check_choice("engine", engine, ENGINE_NAMES)
        if ways < 2:
            raise MAMLConfigError(f"ways={ways} is not a classification task. Fix: use ways >= 2.")
        if inner_steps < 0 or inner_steps_test < 0:
            raise MAMLConfigError(f"inner steps must be >= 0 (got train {inner_steps}, test {inner_steps_test}). "
                                  "Fix: pass non-negative step counts.")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.net = Conv4(ways, in_channels=in_channels, hidden=hidden, image_size=image_size,
                         norm=True, track_running_stats=False)
        names = [n for n, _ in self.net.named_parameters()]
        self.adapted_names = tuple(names if algorithm == "maml" else ("head.weight", "head.bias"))
        self.inner_lrs = nn.ParameterList()
        if inner_lr_mode != "fixed":
            for name in self.adapted_names:
                shape = () if inner_lr_mode == "per_layer" else self.net.get_parameter(name).shape
                self.inner_lrs.append(nn.Parameter(torch.full(shape, float(inner_lr))))
        self._runtime: tuple[str, Any, InnerLoop] | None = None
        self.test_task_accuracies: torch.Tensor | None = None
        self._test_accs: list[torch.Tensor] = []

    # -- the pieces the engines need ----------------------------------------------------------------
    def runtime(self) -> tuple[Any, InnerLoop]:
        """The engine and inner loop for the current device (vmap needs the elementary batch norm)."""
        key = self.device.type
        if self._runtime is None or self._runtime[0] != key:
            engine = make_engine(self.hparams.engine, self.device)
            functional = FunctionalConv4(self.net, **functional_options(engine.name, self.device))
            self._runtime = (key, engine, InnerLoop(functional, self.adapted_names))
        return self._runtime[1], self._runtime[2]

    def params(self) -> dict[str, torch.Tensor]:
        return dict(self.net.named_parameters())

    def learning_rates(self) -> dict[str, torch.Tensor | float]:
        """Inner learning rate per adapted parameter (tensors when learned)."""
        if self.hparams.inner_lr_mode == "fixed":
            return {name: float(self.hparams.inner_lr) for name in self.adapted_names}
        return dict(zip(self.adapted_names, self.inner_lrs))

    # -- training ---------------------------------------------------------------------------------
    def _world(self) -> tuple[int, int]:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def _all_reduce_sum(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Sum tensors over ranks in one collective (identity on one process)."""
        rank, world = self._world()
        if world == 1:
            return tensors
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        out, offset = [], 0
        for t in tensors:
            out.append(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()
        return out

    def meta_step(self, tasks: TaskBatch) -> MetaStep:
        engine, inner = self.runtime()
        return engine.meta_step(inner, self.params(), self.learning_rates(), tasks,
                                steps=self.hparams.inner_steps, first_order=self.hparams.first_order)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        tasks = TaskBatch.from_batch(batch)
        rank, world = self._world()
        if self.hparams.shard_tasks and world > 1:
            if len(tasks) < world:
                raise MAMLConfigError(f"a meta-batch of {len(tasks)} tasks cannot be sharded over {world} ranks. "
                                      "Fix: use a meta-batch of at least world_size tasks.")
            tasks = tasks.shard(rank, world)
        step = self.meta_step(tasks)
        leaves = meta_leaves(self.params(), self.learning_rates())
        grads = [step.grad_sum[name] for name in leaves]
        stats = torch.stack([step.task_losses.sum(), step.task_accuracies.sum(),
                             torch.tensor(float(step.num_tasks), dtype=step.task_losses.dtype)])
        *grads, stats = self._all_reduce_sum([*grads, stats.to(grads[0].dtype)])
        total = stats[2]
        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        for leaf, g in zip(leaves.values(), grads):
            leaf.grad = g / total
        optimizer.step()
        loss, acc = stats[0] / total, stats[1] / total
        self.log("train/loss", loss, prog_bar=True, batch_size=int(total))
        self.log("train/acc", acc, prog_bar=True, batch_size=int(total))
        return loss.detach()

    # -- evaluation --------------------------------------------------------------------------------
    def evaluate_tasks(self, batch: Any, steps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-task query loss and accuracy after ``steps`` (default ``inner_steps_test``) inner steps.

        Works under Lightning's inference mode: the inner loop needs autograd, so inputs are cloned
        outside inference mode.
        """
        engine, inner = self.runtime()
        steps = self.hparams.inner_steps_test if steps is None else steps
        with torch.inference_mode(False), torch.enable_grad():
            tasks = TaskBatch.from_batch(batch)
            tasks = TaskBatch(*(t.clone() for t in (tasks.support_x, tasks.support_y, tasks.query_x, tasks.query_y)))
            return engine.evaluate(inner, self.params(), self.learning_rates(), tasks, steps=steps)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        losses, accs = self.evaluate_tasks(batch)
        self.log("val/loss", losses.mean(), batch_size=len(losses), sync_dist=True)
        self.log("val/acc", accs.mean(), prog_bar=True, batch_size=len(accs), sync_dist=True)

    def on_test_epoch_start(self) -> None:
        self._test_accs = []

    def test_step(self, batch: Any, batch_idx: int) -> None:
        losses, accs = self.evaluate_tasks(batch)
        self._test_accs.append(accs.detach())
        self.log("test/loss", losses.mean(), batch_size=len(losses), sync_dist=True)

    def on_test_epoch_end(self) -> None:
        local = torch.cat(self._test_accs) if self._test_accs else torch.zeros(0, device=self.device)
        gathered = self.all_gather(local)
        accs = gathered.reshape(-1) if gathered.dim() > 1 else gathered
        self.test_task_accuracies = accs.detach().cpu()
        mean, half = mean_ci95(self.test_task_accuracies)
        self.log("test/acc", mean, rank_zero_only=True)
        self.log("test/acc_ci95", half, rank_zero_only=True)
        self.log("test/tasks", float(self.test_task_accuracies.numel()), rank_zero_only=True)

    # -- representation analysis --------------------------------------------------------------------
    def adaptation_activations(self, support_x: torch.Tensor, support_y: torch.Tensor, probe_x: torch.Tensor,
                               record: Sequence[int] = DEFAULT_RECORD_STEPS,
                               layers: Sequence[str] = CONV4_LAYERS) -> dict[int, dict[str, torch.Tensor]]:
        """Activations of ``layers`` on ``probe_x`` after each inner step in ``record`` (0 = before).

        One task: adapt on its support set for ``max(record)`` steps (first order, with the module's
        inner learning rates) and run the probe images through the fast weights at each recorded step.
        """
        _, inner = self.runtime()
        record = sorted(set(int(s) for s in record))
        with torch.inference_mode(False), torch.enable_grad():
            params = {k: v.detach().requires_grad_(k in self.adapted_names) for k, v in self.params().items()}
            lrs = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in self.learning_rates().items()}
            _, snapshots = inner.adapt(params, lrs, support_x.clone(), support_y.clone(), steps=record[-1],
                                       create_graph=False, record=record)
            with torch.no_grad():
                return {step: {k: v.detach() for k, v in inner.model.activations(fast, probe_x.clone(), layers).items()}
                        for step, fast in snapshots.items()}

    def setup(self, stage: str) -> None:
        release_process_group_at_exit()

    def teardown(self, stage: str) -> None:
        """Stop the loop engine's task threads: nothing this module started outlives its fit or test."""
        if self._runtime is not None:
            self._runtime[1].close()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam([*self.net.parameters(), *self.inner_lrs], lr=self.hparams.meta_lr)
