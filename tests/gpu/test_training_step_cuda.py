"""One Lightning training step on CUDA, for the segmentation and the classification module.

The step runs under a real Trainer(accelerator="gpu"): the parameters and the batch must be on the GPU while
it runs, its loss must be finite and equal the same step's loss on the CPU, and the optimiser step must move
the parameters. The modules, data and sizes are those of the CPU tests (tests/modules/).

Loss tolerance: 1e-4 relative. The first step's loss is computed from the same initial weights on both
devices, so only float32 rounding separates them: on the CPU, float32 against float64 differs by 4e-7
(segmentation) and 3e-9 (classification) relative; cuDNN may choose Winograd or FFT convolutions, whose
rounding is larger, so the bound leaves ~100x margin. A real device bug (a buffer left on the CPU, an
unnormalised input, a wrong mask dtype) moves the loss by percents.
"""

from __future__ import annotations

import copy
import math

import lightning as L
import pytest
import torch
from lightning.pytorch import Callback
from torch.utils.data import DataLoader

from modules.segmentation import SegmentationModule
from tests.modules.test_classification import conv4, data
from tests.modules.test_segmentation import SMALL, Blobs

pytestmark = pytest.mark.gpu

LOSS_RTOL = 1e-4


class FirstStep(Callback):
    """What the first training step saw: its loss, and the devices of the parameters and of the batch."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 0:
            self.loss = float(outputs["loss"])
            self.param_devices = {p.device.type for p in pl_module.parameters()}
            tensors = batch.values() if isinstance(batch, dict) else batch
            self.batch_devices = {t.device.type for t in tensors if isinstance(t, torch.Tensor)}


def one_step(module: L.LightningModule, loader: DataLoader, accelerator: str, root) -> tuple[FirstStep, dict, dict]:
    """(what the step saw, parameters before, parameters after) of one training step on a copy of ``module``."""
    module = copy.deepcopy(module)
    before = {n: p.detach().cpu().clone() for n, p in module.named_parameters()}
    seen = FirstStep()
    trainer = L.Trainer(accelerator=accelerator, devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=[seen], default_root_dir=str(root / accelerator))
    trainer.fit(module, train_dataloaders=loader)
    after = {n: p.detach().cpu().clone() for n, p in module.named_parameters()}
    return seen, before, after


def check_step_on_cuda(module: L.LightningModule, make_loader, tmp_path, must_move: tuple[str, ...]) -> None:
    gpu, before, after = one_step(module, make_loader(), "gpu", tmp_path)
    cpu, _, _ = one_step(module, make_loader(), "cpu", tmp_path)
    assert gpu.param_devices == {"cuda"} and gpu.batch_devices == {"cuda"}
    assert cpu.param_devices == {"cpu"}
    assert math.isfinite(gpu.loss)
    assert gpu.loss == pytest.approx(cpu.loss, rel=LOSS_RTOL)
    for name in must_move:
        assert not torch.equal(before[name], after[name]), f"{name} did not change in the CUDA step"
    assert all(torch.isfinite(p).all() for p in after.values())


def test_one_segmentation_step_on_cuda(tmp_path):
    torch.manual_seed(0)
    module = SegmentationModule(lr=5e-3, **SMALL)
    check_step_on_cuda(module, lambda: DataLoader(Blobs(8), batch_size=8, shuffle=False), tmp_path,
                       must_move=("net.encoder.model.conv_stem.weight", "net.segmentation_head.0.weight"))


def test_one_classification_step_on_cuda(tmp_path):
    module = conv4("full")  # a ClassificationModule, every layer group trained
    check_step_on_cuda(module, lambda: data(16), tmp_path,  # 16 examples, batch 16: one batch
                       must_move=("net.block1.0.weight", "net.head.weight", "net.head.bias"))

