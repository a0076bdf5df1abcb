"""MAML meta-training speed and memory against learn2learn, side by side (not asserted; ``make perf``).

Case: conv4 (64 filters, batch norm with batch statistics), 28x28 single-channel images, 5-way 1-shot
with one query per class, meta-batch 16, Adam meta-optimiser; first and second order, 1 and 5 inner
steps (quick: 1 inner step only). Rows:

- ``ours``: :class:`modules.meta_engines.LoopEngine` with its defaults (tasks spread over one worker
  thread per intra-op thread, NHWC activations, native batch norm);
- ``learn2learn``: ``l2l.algorithms.MAML`` clone/adapt with one backward per task, torch's default
  intra-op threads (its documented usage);
- ``ours-vmap``: the vectorised engine, for reference (it targets GPUs).

``seconds`` is the median time of one meta-step over repeats run alternately in this process (so
load changes hit every implementation alike). ``peak_mb`` is the peak resident memory a fresh
process adds during two meta-steps (VmHWM after resetting it, minus VmRSS before). ``error`` (full
mode) is the largest meta-gradient difference from learn2learn in float64, relative to its largest
entry. The note gives achieved GFLOP/s (FLOPs of one meta-step counted by torch's FlopCounterMode)
next to this CPU's measured float32 matmul GFLOP/s.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]
WAYS, SHOTS, QUERIES, META_BATCH, HIDDEN, IMAGE, INNER_LR = 5, 1, 1, 16, 64, 28, 0.4
IMPLS = ("ours", "learn2learn", "ours-vmap")


def _learn2learn():
    with contextlib.redirect_stderr(io.StringIO()):  # gym's deprecation banner
        import learn2learn
    return learn2learn


def make_batch(dtype: torch.dtype = torch.float32, seed: int = 0):
    from modules.meta_engines import TaskBatch

    g = torch.Generator().manual_seed(seed)
    sx = torch.randn(META_BATCH, WAYS * SHOTS, 1, IMAGE, IMAGE, generator=g).to(dtype)
    qx = torch.randn(META_BATCH, WAYS * QUERIES, 1, IMAGE, IMAGE, generator=g).to(dtype)
    sy = torch.arange(WAYS).repeat_interleave(SHOTS).expand(META_BATCH, -1).clone()
    qy = torch.arange(WAYS).repeat_interleave(QUERIES).expand(META_BATCH, -1).clone()
    return TaskBatch(sx, sy, qx, qy)


def make_net(dtype: torch.dtype = torch.float32):
    from modules.nets.conv4 import Conv4

    torch.manual_seed(0)
    return Conv4(WAYS, hidden=HIDDEN, image_size=IMAGE, track_running_stats=False).to(dtype)


def make_step(impl: str, net, batch, steps: int, first_order: bool) -> Callable[[], dict]:
    """One meta-training step of ``impl`` (meta-gradient + Adam update); returns the meta-gradient."""
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    if impl == "learn2learn":
        maml = _learn2learn().algorithms.MAML(net, lr=INNER_LR, first_order=first_order)

        def step() -> dict:
            optimizer.zero_grad()
            for index in range(len(batch)):
                sx, sy, qx, qy = batch.task(index)
                learner = maml.clone()
                for _ in range(steps):
                    learner.adapt(F.cross_entropy(learner(sx), sy))
                (F.cross_entropy(learner(qx), qy) / len(batch)).backward()
            grads = {n: p.grad.clone() for n, p in net.named_parameters()}
            optimizer.step()
            return grads

        return step
    from modules.meta_engines import InnerLoop, functional_options, make_engine
    from modules.nets.functional import FunctionalConv4

    engine_name = "vmap" if impl == "ours-vmap" else "loop"
    engine = make_engine(engine_name)
    model = FunctionalConv4(net, **functional_options(engine_name))
    inner = InnerLoop(model, model.param_names)
    lrs = {n: INNER_LR for n in model.param_names}

    def step() -> dict:
        params = dict(net.named_parameters())
        result = engine.meta_step(inner, params, lrs, batch, steps=steps, first_order=first_order)
        for name, p in params.items():
            p.grad = result.grad_sum[name] / len(batch)
        grads = {n: p.grad.clone() for n, p in params.items()}
        optimizer.step()
        return grads

    return step


def matmul_gflops() -> float:
    """This CPU's float32 matmul throughput (1024^3, torch's intra-op threads), best of a few runs."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        best = min(best, (time.perf_counter() - start) / 4)
    return 2 * 1024**3 / best / 1e9


def count_flops(steps: int, first_order: bool) -> float:
    """FLOPs of one meta-step (the dispatch-level count sees every thread only with one worker)."""
    from torch.utils.flop_counter import FlopCounterMode

    from modules.meta_engines import InnerLoop, LoopEngine
    from modules.nets.functional import FunctionalConv4

    net, batch = make_net(), make_batch()
    model = FunctionalConv4(net)
    inner = InnerLoop(model, model.param_names)
    with FlopCounterMode(display=False) as counter:
        LoopEngine(workers=1).meta_step(inner, dict(net.named_parameters()), {n: INNER_LR for n in model.param_names},
                                        batch, steps=steps, first_order=first_order)
    return float(counter.get_total_flops())


def peak_memory_mb(impl: str, steps: int, first_order: bool) -> float:
    """Peak resident memory added by two meta-steps, measured in a fresh process."""
    code = (f"import sys, json; sys.path.insert(0, {str(REPO)!r}); from benchmarks.perf.perf_maml import _child; "
            f"print(json.dumps(_child({impl!r}, {steps}, {first_order!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if out.returncode != 0:
        return float("nan")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"])


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _child(impl: str, steps: int, first_order: bool) -> dict:
    """Runs in the fresh process of :func:`peak_memory_mb`."""
    net, batch = make_net(), make_batch()
    step = make_step(impl, net, batch, steps, first_order)
    base = _status_kb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    except OSError:
        pass
    step()
    step()
    return {"peak_mb": (_status_kb("VmHWM") - base) / 1024}


def gradient_error(steps: int, first_order: bool, impl: str, float64_reference: dict) -> float:
    net, batch = make_net(), make_batch()
    grads = make_step(impl, net, batch, steps, first_order)()
    scale = max(g.abs().max().item() for g in float64_reference.values())
    return max((grads[n].double() - float64_reference[n]).abs().max().item() for n in grads) / scale


def time_case(steps: int, first_order: bool, repeats: int, impls: tuple[str, ...]) -> dict[str, float]:
    """Median seconds per meta-step of each impl, measured alternately in this process."""
    nets = {impl: make_net() for impl in impls}
    batch = make_batch()
    fns = {impl: make_step(impl, nets[impl], batch, steps, first_order) for impl in impls}
    for fn in fns.values():  # warm-up (allocator, kernels, thread pools)
        fn()
    times: dict[str, list[float]] = {impl: [] for impl in impls}
    for _ in range(repeats):
        for impl, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[impl].append(time.perf_counter() - start)
    return {impl: statistics.median(values) for impl, values in times.items()}


def run(quick: bool = False) -> list[dict]:
    cases = [(1, True), (1, False)] if quick else [(1, True), (1, False), (5, True), (5, False)]
    impls = ("ours", "learn2learn") if quick else IMPLS
    repeats = 3 if quick else 5
    peak_gflops = matmul_gflops()
    rows = []
    for steps, first_order in cases:
        case = (f"{'first' if first_order else 'second'}-order {steps} inner step{'s' if steps > 1 else ''}, "
                f"B={META_BATCH}")
        seconds = time_case(steps, first_order, repeats, impls)
        flops = count_flops(steps, first_order)
        reference = None
        if not quick:
            net64, batch64 = make_net(torch.float64), make_batch(torch.float64)
            reference = make_step("learn2learn", net64, batch64, steps, first_order)()
        for impl in impls:
            row = {"topic": "maml", "case": case, "impl": impl, "seconds": seconds[impl],
                   "peak_mb": peak_memory_mb(impl, steps, first_order) if impl != "ours-vmap" or not quick else None,
                   "note": f"{flops / seconds[impl] / 1e9:.1f} GFLOP/s of {peak_gflops:.0f} (fp32 matmul); "
                           f"{1 / seconds[impl]:.2f} steps/s"}
            if reference is not None:
                row["error"] = gradient_error(steps, first_order, impl, reference)
            rows.append(row)
    return rows


if __name__ == "__main__":
    quick_mode = "--quick" in sys.argv
    for result in run(quick=quick_mode):
        print(result)
