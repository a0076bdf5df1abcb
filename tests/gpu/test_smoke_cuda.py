"""The MAML study's smoke profile end to end on the GPU, as a user runs it: ``--accelerator gpu``.

MAML's smoke profile is the cheapest end-to-end run of a study (a few meta-steps of a hidden-8 Conv4 on
embedded glyphs, plus its classifier control) and it exercises the GPU-specific path: the inner-loop engine
"auto" picks the vectorised engine on CUDA. The run must finish, write the report, and record in every
run's run.yaml that it ran on the GPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.gpu

REPO = Path(__file__).resolve().parents[2]


def test_maml_smoke_profile_runs_on_the_gpu_and_records_it(tmp_path):
    results = tmp_path / "results"
    env = {**os.environ, "TSUITE_RESULTS": str(results), "TSUITE_ACCELERATOR": "gpu"}
    done = subprocess.run([sys.executable, "-m", "benchmarks", "maml", "--profile", "smoke", "--accelerator", "gpu",
                           "--results", str(results)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
    assert (results / "maml" / "report.md").is_file()
    run_files = sorted((results / "maml").glob("*/run.yaml"))
    assert run_files, f"no run.yaml under {results / 'maml'}"
    for path in run_files:
        record = yaml.safe_load(path.read_text())
        assert record["launch"]["accelerator"] == "gpu", f"{path.parent.name} ran on {record['launch']}"
        assert (path.parent / "metrics.json").is_file(), f"{path.parent.name} did not finish"
