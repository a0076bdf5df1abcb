"""Training throughput of SegmentationModule under Lightning vs a bare PyTorch loop (same model, data, batch).

Both loops train the same SegmentationModule (U-Net, tf_efficientnet_lite0 encoder) on the same in-memory
batches with the same optimiser. They alternate epoch by epoch (bare, Lightning, bare, ...) so that load
on a shared machine hits both alike; each row's ``seconds`` is the median epoch time. Lightning's epoch is
timed from ``on_train_epoch_start`` to ``on_train_epoch_end`` (its per-fit setup is excluded, as a long
run amortises it). Goal: Lightning throughput >= 0.9x bare, i.e. seconds(ours) / seconds(bare) <= 1.11.
"""

from __future__ import annotations

import statistics
import time

import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset


def _data(n: int, size: int, batch_size: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, size, size, generator=g)
    masks = (torch.rand(n, size, size, generator=g) > 0.7).long()
    return DataLoader(TensorDataset(images, masks), batch_size=batch_size, shuffle=False)


def _bare_epoch(module, optimiser, loader) -> float:
    module.train()
    module.on_train_epoch_start()
    start = time.perf_counter()
    for x, mask in loader:
        loss = module.loss(module(x), mask)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return time.perf_counter() - start


class EpochTimer(Callback):
    """Seconds of the last training epoch."""

    def on_train_epoch_start(self, trainer, pl_module):
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.seconds = time.perf_counter() - self.start


def _lightning_epoch(module, loader) -> float:
    import lightning as L

    timer = EpochTimer()
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                        callbacks=[timer], accelerator="cpu", devices=1)
    trainer.fit(module, train_dataloaders=loader)
    return timer.seconds


def run(quick: bool = False) -> list[dict]:
    """Median epoch seconds of the bare loop and of Lightning, measured side by side."""
    import lightning as L

    from modules.segmentation import SegmentationModule

    size, n, batch_size, repeats = (32, 32, 8, 3) if quick else (64, 64, 16, 5)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same single thread for both; 2 spinning threads are erratic on shared cores
    try:
        loader = _data(n, size, batch_size)
        L.seed_everything(0, verbose=False)
        bare_module = SegmentationModule()
        bare_optimiser = bare_module.configure_optimizers()
        L.seed_everything(0, verbose=False)
        lightning_module = SegmentationModule()
        _bare_epoch(bare_module, bare_optimiser, loader)  # warm-up both (allocator, oneDNN kernels)
        _lightning_epoch(lightning_module, loader)
        bare, lightning = [], []
        for _ in range(repeats):
            bare.append(_bare_epoch(bare_module, bare_optimiser, loader))
            lightning.append(_lightning_epoch(lightning_module, loader))
    finally:
        torch.set_num_threads(threads)
    case = f"U-Net tf_efficientnet_lite0 {size}x{size} batch {batch_size}, {n // batch_size} steps/epoch"
    ratio = statistics.median(bare) / statistics.median(lightning)
    return [
        {"topic": "segmentation", "case": case, "impl": "ours", "seconds": statistics.median(lightning),
         "note": f"Lightning SegmentationModule; throughput {ratio:.2f}x bare (goal >= 0.9); {repeats} epochs"},
        {"topic": "segmentation", "case": case, "impl": "bare-pytorch", "seconds": statistics.median(bare),
         "note": "same module, data, optimiser in a plain loop"},
    ]


if __name__ == "__main__":
    for row in run(quick=False):
        print(row)
