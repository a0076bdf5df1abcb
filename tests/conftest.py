"""Test-wide settings: CPU unless a test is marked ``gpu``, few threads, W&B offline, results and caches in
temp dirs.

CUDA is not hidden (torch initialises it once per process, so a hidden GPU could never come back for the
``gpu`` tests). Instead every other test stays on the CPU explicitly: Trainers built in tests pass
``accelerator="cpu"``, study runs get it from ``TSUITE_ACCELERATOR=cpu`` (set here, so subprocesses
inherit it, and forced, so a developer's own setting cannot move the CPU tests onto a GPU), and code
that picks a device itself follows that accelerator. ``gpu`` tests ask for the GPU explicitly.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DISABLE_GIT", "true")
os.environ["TSUITE_ACCELERATOR"] = "cpu"

import torch  # noqa: E402

torch.set_num_threads(2)


def _slurm_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and any(s.startswith(("idle", "mix", "alloc")) for s in out.stdout.split())


def pytest_collection_modifyitems(config, items):
    slurm_ok = _slurm_up()
    gpu_ok = torch.cuda.is_available()
    for item in items:  # markers, not keywords: a parameter id "gpu" does not make a test a GPU test
        if item.get_closest_marker("slurm") and not slurm_ok:
            item.add_marker(pytest.mark.skip(reason="no SLURM cluster is up here (sinfo shows no idle node); "
                                                    ".ci/run starts one with tools/start_slurm.sh"))
        if item.get_closest_marker("gpu") and not gpu_ok:
            item.add_marker(pytest.mark.skip(reason="no CUDA device on this machine"))


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path_factory, monkeypatch):
    """Results and W&B files of each test go to a temp dir; the data cache is shared per session."""
    monkeypatch.setenv("TSUITE_RESULTS", str(tmp_path_factory.mktemp("results")))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path_factory.mktemp("wandb")))
    yield
