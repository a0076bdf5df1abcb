"""Cost of the analysis callbacks (not asserted; ``make perf`` prints the ratios).

- Snapshot + similarity at the default frequency (every epoch, 500 probe images, flattened layers,
  references "start" and "random_init", linear CKA, heatmaps at fit end) against the same conv4
  Fashion-MNIST fit without callbacks: rows "ours" (with) and "no callbacks"; the note gives the
  overhead in percent (target <= 5%), both from the two medians and from the time spent inside the
  callbacks' hooks of the same run (robust to load changes between runs).
- An interpolation curve of K points against K plain evaluation passes on the same data: rows "ours"
  and "K x evaluate"; the note gives ours / (K passes) (target <= 1.1), also with BN recomputation.
Timings are medians of repeats run alternately in this process, with one intra-op thread: on a shared
2-core machine two spinning threads per process make CPU timings erratic (up to 50x), and both sides
of each ratio run the same way.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from lightning.pytorch import Trainer, seed_everything
from torch.utils.data import DataLoader, TensorDataset

from callbacks import RepresentationSnapshot, SimilarityTracker, evaluate, interpolation_curve
from datamodules.fashion_mnist import load_fashion_mnist
from modules.classification import ClassificationModule

TOPIC = "callbacks"


def _tensors(split: str, n: int) -> TensorDataset:
    images, labels = load_fashion_mnist(split)
    x = torch.from_numpy(images[:n]).float().div_(255.0).unsqueeze(1)
    x = (x - x.mean()) / x.std()
    return TensorDataset(x, torch.from_numpy(labels[:n]))


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


HOOKS = ("on_fit_start", "on_train_batch_end", "on_train_epoch_end", "on_fit_end")


def _timed(callback, spent: list[float]):
    """Record the wall time of the callback's hooks (the tracker runs inside the snapshot's hooks)."""
    for name in HOOKS:
        method = getattr(callback, name)

        def wrapper(*args, _method=method, **kwargs):
            start = time.perf_counter()
            try:
                return _method(*args, **kwargs)
            finally:
                spent.append(time.perf_counter() - start)

        setattr(callback, name, wrapper)
    return callback


def _fit(train: TensorDataset, probe: torch.Tensor, epochs: int, with_callbacks: bool,
         limit_batches: int | None = None) -> tuple[float, float]:
    """(fit seconds, seconds spent inside the callbacks)."""
    seed_everything(0, verbose=False)
    module = ClassificationModule("conv4", 10, lr=1e-3)
    spent: list[float] = []
    with tempfile.TemporaryDirectory() as root:
        callbacks = [_timed(RepresentationSnapshot(probe), spent), SimilarityTracker()] if with_callbacks else []
        trainer = Trainer(default_root_dir=root, max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                          enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                          callbacks=callbacks, limit_train_batches=limit_batches)
        loader = DataLoader(train, batch_size=64, shuffle=True)
        start = time.perf_counter()
        trainer.fit(module, loader)
        return time.perf_counter() - start, sum(spent)


def snapshot_overhead(n_train: int, epochs: int, repeats: int) -> list[dict]:
    train, probe = _tensors("train", n_train), _tensors("test", 500).tensors[0]
    _fit(train, probe, 1, True, limit_batches=2)  # warm-up: imports, allocator, first-call costs
    with_cb, without, inside = [], [], []
    for _ in range(repeats):  # alternate so that load changes hit both sides alike
        without.append(_fit(train, probe, epochs, False)[0])
        total, spent = _fit(train, probe, epochs, True)
        with_cb.append(total)
        inside.append(spent / (total - spent))
    ours, plain = statistics.median(with_cb), statistics.median(without)
    case = f"conv4 fit N={n_train} epochs={epochs}"
    note = (f"overhead with/without {100 * (ours / plain - 1):+.1f}%, measured inside the run "
            f"{100 * statistics.median(inside):.1f}% (target <= 5%)")
    return [{"topic": TOPIC, "case": case, "impl": "ours", "seconds": ours, "note": note},
            {"topic": TOPIC, "case": case, "impl": "no callbacks", "seconds": plain}]


def interpolation_cost(n_eval: int, points: int, repeats: int, bn_batches: int | None) -> list[dict]:
    seed_everything(0, verbose=False)
    model_a, model_b = ClassificationModule("conv4", 10), ClassificationModule("conv4", 10, head_seed=1)
    torch.manual_seed(1)
    for p in model_b.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    data = _tensors("test", n_eval)
    loader = DataLoader(data, batch_size=250)
    bn_loader = DataLoader(_tensors("train", 64 * (bn_batches or 1)), batch_size=64) if bn_batches else None
    state_a, state_b = model_a.state_dict(), model_b.state_dict()

    def curve():
        interpolation_curve(model_a, state_a, state_b, loader, points, bn_loader=bn_loader,
                            bn_batches=bn_batches)

    def passes():
        for _ in range(points):
            evaluate(model_a, loader)

    ours, baseline = _median_seconds(curve, repeats), _median_seconds(passes, repeats)
    case = f"interp K={points} N={n_eval}" + (f" +BN({bn_batches}x64)" if bn_batches else "")
    note = f"curve / (K evaluation passes) = {ours / baseline:.2f} (target <= 1.1"
    note += ", BN passes included)" if bn_batches else ")"
    return [{"topic": TOPIC, "case": case, "impl": "ours", "seconds": ours, "note": note},
            {"topic": TOPIC, "case": case, "impl": "K x evaluate", "seconds": baseline}]


def run(quick: bool = False) -> list[dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _rows(quick)
    finally:
        torch.set_num_threads(threads)


def _rows(quick: bool) -> list[dict]:
    if quick:
        rows = snapshot_overhead(n_train=4000, epochs=1, repeats=1)
        rows += interpolation_cost(n_eval=1000, points=5, repeats=1, bn_batches=None)
        return rows
    rows = snapshot_overhead(n_train=30000, epochs=2, repeats=3)
    rows += interpolation_cost(n_eval=2000, points=11, repeats=3, bn_batches=None)
    rows += interpolation_cost(n_eval=2000, points=11, repeats=3, bn_batches=5)
    return rows


if __name__ == "__main__":
    for row in run(quick=True):
        print(row)
