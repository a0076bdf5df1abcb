"""Callback tests run tiny models: one intra-op thread each (see ``_one_thread``)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads; on a busy 2-core machine 2 threads spin (50x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _no_wandb_run_left_open():
    """A test that fails before reading its W&B run back must not hand that open run to the next test."""
    yield
    import wandb

    if wandb.run is not None:
        wandb.finish()
