"""Data-parallel MAML: the tasks of a meta-batch are split over 2 CPU processes (gloo) and the
summed meta-gradients all-reduced, so 2 processes train exactly what 1 process trains."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from tests.modules.test_maml import comparable, loader, small_module, synthetic_meta_batches


def train(devices: int, strategy: str) -> dict[str, torch.Tensor]:
    torch.set_num_threads(1)
    module = small_module(first_order=False, inner_steps=2)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy=strategy, max_steps=3, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        use_distributed_sampler=False)  # every rank gets the same meta-batch, keeps its share
    trainer.fit(module, train_dataloaders=loader(synthetic_meta_batches(3, tasks_per_batch=5)))
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.ddp
def test_two_processes_train_the_same_weights_as_one():
    torch.multiprocessing.set_sharing_strategy("file_system")
    one = train(1, "auto")
    two = train(2, "ddp_spawn")
    assert set(one) == set(two)
    changed = [k for k in one if comparable(k)]
    for key in changed:
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6, msg=f"{key} differs")
    assert any(not torch.equal(one[k], small_module(first_order=False).state_dict()[k]) for k in changed)
