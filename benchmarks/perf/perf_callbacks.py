"""Cost of the analysis callbacks (not asserted; ``make perf`` prints the ratios).

- Snapshot + similarity at the default frequency (every epoch plus fit start, flattened layers,
  references "start" and "random_init", linear CKA, heatmaps and curves at fit end) against the same
  conv4 Fashion-MNIST fit without callbacks: rows "ours" (with) and "no callbacks"; the note gives the
  overhead in percent (target <= 5%): the time spent inside the callbacks' hooks relative to the rest
  of the same fit, then the wall-clock ratios of paired repeats (with/without back to back, in
  alternating order). A second case mirrors the fine-tuning study's tiny fine-tune stage (400 images,
  8 epochs, a 400-image probe, no snapshot files, no heatmaps): there the probe is as large as the
  training set, the probe forward passes dominate and the 5% goal cannot hold (the note says how much
  one snapshot costs in training epochs).
- An interpolation curve of K points against K plain evaluation passes of the same model and data:
  rows "ours" and "K x evaluate"; the note gives curve / (K passes) (target <= 1.1). With BatchNorm
  recomputation the peer also does the K recalibration passes ("K x (BN + evaluate)").
Timings are medians of repeats run alternately in this process, with one intra-op thread: on a shared
2-core machine two spinning threads per process make CPU timings erratic (up to 50x), and both sides
of each ratio run the same way. Under load, minutes-long runs drift by +-10% between repeats, so each
note leads with a figure measured inside the same run (time spent in the callbacks' hooks vs the rest
of the fit; the curve's time vs its own evaluation passes), and gives the wall-clock ratios after it.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager

import torch
from lightning.pytorch import Trainer, seed_everything
from torch.utils.data import DataLoader, TensorDataset

from analysis.evaluation import evaluate, recompute_batchnorm
from analysis.interpolation import interpolation_curve
from callbacks import RepresentationSnapshot, SimilarityTracker
from datamodules.fashion_mnist import load_fashion_mnist
from modules.classification import ClassificationModule

TOPIC = "callbacks"


def _tensors(split: str, n: int, classes: int = 10) -> TensorDataset:
    images, labels = load_fashion_mnist(split)
    keep = labels < classes
    images, labels = images[keep][:n], labels[keep][:n]
    x = torch.from_numpy(images).float().div_(255.0).unsqueeze(1)
    x = (x - x.mean()) / x.std()
    return TensorDataset(x, torch.from_numpy(labels))


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _paired(ours: Callable[[], float], peer: Callable[[], float], repeats: int) -> tuple[list, list]:
    """Run ``ours`` and ``peer`` back to back ``repeats`` times, alternating which goes first."""
    mine, theirs = [], []
    for index in range(repeats):
        if index % 2 == 0:
            theirs.append(peer())
            mine.append(ours())
        else:
            mine.append(ours())
            theirs.append(peer())
    return mine, theirs


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


class _Fit:
    """One study-like fit configuration, run with or without the snapshot + similarity callbacks."""

    def __init__(self, n_train: int, epochs: int, *, classes: int = 10, hidden: int = 64, batch_size: int = 64,
                 probe_size: int = 500, snapshot_options: dict | None = None,
                 tracker_options: dict | None = None) -> None:
        self.train = _tensors("train", n_train, classes)
        self.probe = _tensors("test", probe_size, classes).tensors[0]
        self.epochs, self.classes, self.hidden = epochs, classes, hidden
        self.batch_size, self.probe_size = batch_size, probe_size
        self.snapshot_options, self.tracker_options = snapshot_options or {}, tracker_options or {}
        self.snapshots: list[int] = []

    def __call__(self, with_callbacks: bool, epochs: int | None = None,
                 limit_batches: int | None = None) -> tuple[float, float]:
        """(fit seconds, seconds spent inside the callbacks' hooks)."""
        seed_everything(0, verbose=False)
        module = ClassificationModule("conv4", self.classes, hidden=self.hidden, lr=1e-3)
        spent: list[float] = []
        with tempfile.TemporaryDirectory() as root:
            snapshot = RepresentationSnapshot(self.probe, probe_size=self.probe_size, **self.snapshot_options)
            tracker = SimilarityTracker(**self.tracker_options)
            callbacks = [_timed(snapshot, spent), tracker] if with_callbacks else []
            trainer = Trainer(default_root_dir=root, max_epochs=epochs or self.epochs, accelerator="cpu",
                              devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                              enable_model_summary=False, callbacks=callbacks, limit_train_batches=limit_batches)
            loader = DataLoader(self.train, batch_size=self.batch_size, shuffle=True)
            start = time.perf_counter()
            trainer.fit(module, loader)
            seconds = time.perf_counter() - start
            if with_callbacks:
                self.snapshots.append(len({row["tag"] for row in tracker.rows}))
            return seconds, sum(spent)


def snapshot_overhead(fit: _Fit, case: str, repeats: int) -> list[dict]:
    fit(True, epochs=1, limit_batches=2)  # warm-up: imports, allocator, first-call costs
    inside: list[float] = []

    def with_callbacks() -> float:
        total, spent = fit(True)
        inside.append(spent / (total - spent))
        return total

    ours, plain = _paired(with_callbacks, lambda: fit(False)[0], repeats)
    paired = [o / p - 1 for o, p in zip(ours, plain)]
    per_epoch = statistics.median(plain) / fit.epochs
    per_snapshot = statistics.median(o - p for o, p in zip(ours, plain)) / fit.snapshots[-1]
    note = (f"in the run: callbacks take {100 * statistics.median(inside):.1f}% of the training time (target <= 5%); "
            f"wall clock with/without {', '.join(f'{100 * r:+.1f}%' for r in paired)} (median "
            f"{100 * statistics.median(paired):+.1f}%); {fit.snapshots[-1]} snapshots, one costs "
            f"{per_snapshot / per_epoch:.2f} training epochs")
    return [{"topic": TOPIC, "case": case, "impl": "ours", "seconds": statistics.median(ours), "note": note},
            {"topic": TOPIC, "case": case, "impl": "no callbacks", "seconds": statistics.median(plain)}]


@contextmanager
def _passes_timed(spent: list[float]):
    """Time the evaluation and BN passes that ``interpolation_curve`` makes (the rest is its own cost)."""
    import analysis.interpolation as interpolation

    originals = {name: getattr(interpolation, name) for name in ("evaluate", "recompute_batchnorm")}

    def timed(fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent.append(time.perf_counter() - start)
        return wrapper

    try:
        for name, fn in originals.items():
            setattr(interpolation, name, timed(fn))
        yield
    finally:
        for name, fn in originals.items():
            setattr(interpolation, name, fn)


def interpolation_cost(n_eval: int, points: int, repeats: int, bn_batches: int | None) -> list[dict]:
    seed_everything(0, verbose=False)
    model_a, model_b = ClassificationModule("conv4", 10), ClassificationModule("conv4", 10, head_seed=1)
    torch.manual_seed(1)
    for p in model_b.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    loader = DataLoader(_tensors("test", n_eval), batch_size=250)
    bn_loader = DataLoader(_tensors("train", 64 * (bn_batches or 1)), batch_size=64) if bn_batches else None
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    peer = model_b  # the peer evaluates a separate model: the curve must leave model_a's weights alone

    in_run: list[float] = []

    def curve() -> float:
        spent: list[float] = []
        with _passes_timed(spent):
            seconds = _seconds(lambda: interpolation_curve(model_a, state_a, state_b, loader, points,
                                                           bn_loader=bn_loader, bn_batches=bn_batches))
        in_run.append(seconds / sum(spent))
        return seconds

    def passes() -> float:
        def run():
            for _ in range(points):
                if bn_loader is not None:
                    recompute_batchnorm(peer, bn_loader, bn_batches)
                evaluate(peer, loader)
        return _seconds(run)

    curve(), passes()  # warm-up
    ours, theirs = _paired(curve, passes, repeats)
    ratios = [o / t for o, t in zip(ours, theirs)]
    case = f"interp K={points} N={n_eval}" + (f" +BN({bn_batches}x64)" if bn_batches else "")
    passes = f"K {'BN + ' if bn_batches else ''}evaluation passes"
    note = (f"in the run: curve / its own {passes} = {statistics.median(in_run[1:]):.3f} (target <= 1.1); "
            f"wall clock vs {passes} run apart {', '.join(f'{r:.2f}' for r in ratios)} (median "
            f"{statistics.median(ratios):.2f})")
    return [{"topic": TOPIC, "case": case, "impl": "ours", "seconds": statistics.median(ours), "note": note},
            {"topic": TOPIC, "case": case, "impl": "K x (BN + evaluate)" if bn_batches else "K x evaluate",
             "seconds": statistics.median(theirs)}]


def run(quick: bool = False) -> list[dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _rows(quick)
    finally:
        torch.set_num_threads(threads)


def _rows(quick: bool) -> list[dict]:
    if quick:
        rows = snapshot_overhead(_Fit(4000, 1), "conv4 fit N=4000 epochs=1", repeats=1)
        rows += interpolation_cost(n_eval=1000, points=5, repeats=1, bn_batches=None)
        return rows
    rows = snapshot_overhead(_Fit(30000, 2), "conv4 fit N=30000 epochs=2", repeats=3)
    finetune = _Fit(400, 8, classes=5, hidden=32, batch_size=32, probe_size=400,
                    snapshot_options={"save": False, "keep": 1}, tracker_options={"heatmaps": "never"})
    rows += snapshot_overhead(finetune, "conv4-32 fine-tune N=400 ep=8 probe=400", repeats=3)
    rows += interpolation_cost(n_eval=1000, points=11, repeats=3, bn_batches=None)
    rows += interpolation_cost(n_eval=1000, points=11, repeats=3, bn_batches=5)
    return rows


if __name__ == "__main__":
    for row in run(quick=True):
        print(row)
