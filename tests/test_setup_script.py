"""tools/setup.sh refuses, before pip starts, to install torch on a disk that cannot hold it."""

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_setup_stops_with_a_clear_error_when_the_disk_is_too_small(tmp_path: Path) -> None:
    env = {**os.environ, "VENV": str(tmp_path / "venv"), "SETUP_NEED_GB": "1000000"}
    done = subprocess.run(["bash", "tools/setup.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1
    assert "needs about 1000000 GB of free disk" in done.stderr
    assert "set VENV=" in done.stderr
    assert not (tmp_path / "venv").exists(), "the check must come before the virtualenv is created"
