"""Tiny CPU models, data and trainers shared by the callback tests (and picklable for ddp_spawn)."""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from torch.utils.data import DataLoader, Sampler

from modules.distributed import release_process_group_at_exit
from modules.nets.conv4 import CONV4_LAYERS, Conv4
from tests.analysis.tiny_models import IMAGE_SIZE, NUM_CLASSES, blob_images
from tests.analysis.tiny_models import loader as loader  # the callback tests take it from here


class TinyClassifier(LightningModule):
    """Conv4 (8 channels, 16x16 inputs) that names its watch layers; ``frozen`` modules never train."""

    def __init__(self, norm: bool = True, frozen: tuple[str, ...] = (), lr: float = 0.1,
                 seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = Conv4(NUM_CLASSES, in_channels=1, hidden=8, image_size=IMAGE_SIZE, norm=norm)
        self.frozen, self.lr = tuple(frozen), lr
        for name in self.frozen:
            self.get_submodule(name).requires_grad_(False)
        self.train()  # Lightning keeps the modes it finds: put frozen blocks in eval from the start

    def default_watch_layers(self) -> list[str]:
        return [f"net.{name}" for name in CONV4_LAYERS]

    def train(self, mode: bool = True):
        super().train(mode)
        for name in self.frozen:  # frozen blocks keep their BN statistics too
            self.get_submodule(name).eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def setup(self, stage: str) -> None:
        release_process_group_at_exit()  # as every LightningModule of the suite (ddp_spawn tests use this one)

    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=self.lr, momentum=0.9)


class RankBatchSampler(Sampler[list[int]]):
    """Global batches 0..b-1, b..2b-1, ... in order; under DDP rank r of w takes every w-th index of each.

    One process then sees in each step exactly the examples that w processes see together, so gradients
    (averaged by DDP) match: use it with ``Trainer(use_distributed_sampler=False)``. Lightning's own
    distributed sampler always shuffles training data, which makes 1- and 2-process runs differ.
    """

    def __init__(self, n: int, global_batch: int) -> None:
        self.n, self.global_batch = n, global_batch

    def __iter__(self):
        import torch.distributed as dist

        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        for start in range(0, self.n - self.global_batch + 1, self.global_batch):
            yield list(range(start + rank, start + self.global_batch, world))

    def __len__(self) -> int:
        return self.n // self.global_batch


def rank_split_loader(n: int = 64, seed: int = 0, global_batch: int = 16) -> DataLoader:
    """blob_images in fixed global batches, split across DDP ranks by ``RankBatchSampler``."""
    return DataLoader(blob_images(n, seed), batch_sampler=RankBatchSampler(n, global_batch))


def wandb_logger(save_dir: Path, run_id: str = "cbtest") -> WandbLogger:
    return WandbLogger(project="callbacks-tests", id=run_id, save_dir=str(save_dir), offline=True,
                       log_model=False)


def make_trainer(root: Path, callbacks: list, *, epochs: int = 2, logger=None, **kwargs) -> Trainer:
    options = dict(default_root_dir=str(root), max_epochs=epochs, accelerator="cpu", devices=1,
                   logger=logger if logger is not None else False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                   num_sanity_val_steps=0)
    options.update(kwargs)
    return Trainer(**options)


def _complete(run_dir: Path) -> bool:
    """True once the offline run's log ends with W&B's "exit" record (read with wandb's own reader)."""
    from benchmarks.core.wandb_reader import leet_records

    records = leet_records(run_dir)
    return bool(records) and records[-1].get("type") == "exit"


def read_wandb(root: Path, timeout: float = 60.0):
    """Finish the active W&B run and read the one offline run under ``root`` back.

    ``wandb.finish()`` returns before the service has written the file (it can still be the bare
    7-byte header), so wait for the closing "exit" record first.
    """
    import wandb

    from benchmarks.core.wandb_reader import find_offline_runs, read_offline_run

    wandb.finish()
    deadline = time.monotonic() + timeout
    while True:
        runs = find_offline_runs(root)
        if len(runs) == 1 and _complete(runs[0]):
            return read_offline_run(runs[0])
        if time.monotonic() > deadline:
            raise AssertionError(f"no complete offline W&B run under {root} after {timeout}s: {runs}")
        time.sleep(0.2)


def media_types(run) -> dict[str, str]:
    """W&B media logged in a run read back: key -> "_type" (wandb flattens media to "<key>._type")."""
    return {key.removesuffix("._type"): value for row in run.history for key, value in row.items()
            if key.endswith("._type")}

