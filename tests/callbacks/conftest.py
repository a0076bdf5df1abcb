"""Callback tests run tiny models: one intra-op thread each (tests/threads.py)."""

import pytest

from tests.threads import one_thread  # noqa: F401  (autouse: one intra-op thread)


@pytest.fixture(autouse=True)
def _no_wandb_run_left_open():
    """A test that fails before reading its W&B run back must not hand that open run to the next test."""
    yield
    import wandb

    if wandb.run is not None:
        wandb.finish()
