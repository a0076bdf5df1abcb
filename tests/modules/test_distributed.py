"""The process group a DDP run starts is destroyed at exit, while Python is still alive (no abort)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import torch.distributed as dist

from modules.distributed import destroy_process_group_if_initialized


def test_destroys_an_initialised_group_and_ignores_a_missing_one(tmp_path):
    destroy_process_group_if_initialized()  # nothing to do
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    assert dist.is_initialized()
    destroy_process_group_if_initialized()
    assert not dist.is_initialized()


def test_a_process_that_exits_with_a_live_gloo_group_destroys_it_at_exit(tmp_path):
    script = textwrap.dedent(f"""
        import atexit, torch, torch.distributed as dist
        from modules.distributed import release_process_group_at_exit
        dist.init_process_group("gloo", init_method="file://{tmp_path / 'store'}", rank=0, world_size=1)
        dist.all_reduce(torch.ones(3))
        atexit.register(lambda: print("group alive after the handler:", dist.is_initialized()))
        release_process_group_at_exit()
        release_process_group_at_exit()  # registered once
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # atexit runs handlers last-in first-out: the group is destroyed first, then the print runs.
    assert "group alive after the handler: False" in done.stdout
