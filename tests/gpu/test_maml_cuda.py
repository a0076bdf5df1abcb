"""MAML meta-gradients on CUDA equal learn2learn's CPU float64 reference, for both inner-loop engines.

The reference, the tasks, the engines and the float64 Conv4 (fixture ``net``, shared through
tests/gpu/conftest.py) are those of the CPU tests (tests/modules/test_maml_engines.py): learn2learn's MAML
(clone, adapt, one backward per task) on the CPU in float64.

- float64 on CUDA: the same 1e-10 as on the CPU (only the summation order of the kernels differs).
- float32 on CUDA: max |error| <= 1e-4 x the largest reference gradient entry. Measured on the CPU, float32
  against this float64 reference is at most 1.2e-5 x that scale (second order, 5 inner steps: rounding is
  amplified through five differentiated updates and batch norm over 5 support images), 2e-6 for one step,
  so the bound leaves about 8x margin for other kernels' summation orders. A real device bug stays far above
  it: the native batch norm's wrong double backward under vmap alone is 9e-3 absolute after one step.
  Errors are relative to the largest entry, not per tensor: conv biases before batch norm have a zero
  meta-gradient up to rounding, so their relative error means nothing.
"""

from __future__ import annotations

import copy

import pytest
import torch

from modules.meta_engines import InnerLoop, TaskBatch
from modules.nets.functional import FunctionalConv4
from tests.modules.test_maml_engines import (
    ENGINES,
    INNER_LR,
    TOLERANCE,
    learn2learn_meta_gradient,
    make_tasks,
    max_error,
)

pytestmark = pytest.mark.gpu

FLOAT32_SCALED_TOLERANCE = 1e-4


def tasks_on(tasks: TaskBatch, dtype: torch.dtype) -> TaskBatch:
    """The same tasks on the GPU, images in ``dtype`` (labels stay integer)."""
    return TaskBatch(tasks.support_x.to("cuda", dtype), tasks.support_y.cuda(), tasks.query_x.to("cuda", dtype),
                     tasks.query_y.cuda())


def cuda_meta_gradient(net_cpu: torch.nn.Module, tasks: TaskBatch, engine_name: str, dtype: torch.dtype,
                       steps: int, first_order: bool) -> dict[str, torch.Tensor]:
    """The engine's summed meta-gradient with the network and tasks on CUDA in ``dtype``."""
    model_net = copy.deepcopy(net_cpu).to("cuda", dtype)
    engine_cls, options = ENGINES[engine_name]
    model = FunctionalConv4(model_net, **options)
    result = engine_cls().meta_step(InnerLoop(model, model.param_names), dict(model_net.named_parameters()),
                                    {n: INNER_LR for n in model.param_names}, tasks_on(tasks, dtype),
                                    steps=steps, first_order=first_order)
    assert {g.device.type for g in result.grad_sum.values()} == {"cuda"}
    assert {g.dtype for g in result.grad_sum.values()} == {dtype}
    assert result.task_losses.device.type == "cuda" and bool(torch.isfinite(result.task_losses).all())
    return {k: g.double().cpu() for k, g in result.grad_sum.items()}


@pytest.mark.parametrize("engine_name", sorted(ENGINES))
@pytest.mark.parametrize("first_order", [True, False], ids=["first-order", "second-order"])
@pytest.mark.parametrize("steps", [1, 5])
def test_float64_meta_gradient_on_cuda_equals_the_cpu_reference(net, engine_name, first_order, steps):
    tasks = make_tasks()
    reference = learn2learn_meta_gradient(net, tasks, steps, first_order)
    ours = cuda_meta_gradient(net, tasks, engine_name, torch.float64, steps, first_order)
    assert max(g.abs().max().item() for g in reference.values()) > 1e-3  # a real, non-vanishing gradient
    assert max_error(ours, reference) < TOLERANCE


@pytest.mark.parametrize("engine_name", sorted(ENGINES))
@pytest.mark.parametrize("first_order", [True, False], ids=["first-order", "second-order"])
@pytest.mark.parametrize("steps", [1, 5])
def test_float32_meta_gradient_on_cuda_is_within_float32_rounding_of_the_reference(net, engine_name, first_order,
                                                                                   steps):
    tasks = make_tasks(seed=2)
    reference = learn2learn_meta_gradient(net, tasks, steps, first_order)
    ours = cuda_meta_gradient(net, tasks, engine_name, torch.float32, steps, first_order)
    scale = max(g.abs().max().item() for g in reference.values())
    error = max_error(ours, reference)
    assert error <= FLOAT32_SCALED_TOLERANCE * scale, f"max error {error:.3g} = {error / scale:.3g} x scale {scale:.3g}"
