"""The run store: atomic writes, statuses, finished runs listed with their configs."""

import json

from benchmarks.core.runstore import RunStore, atomic_write_json


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    atomic_write_json(tmp_path / "a.json", {"x": 2})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_status_lifecycle(tmp_path):
    store = RunStore("demo", tmp_path)
    assert store.status("k") == "pending"
    store.write_run_config("k", {"study": "demo", "stage": "s", "params": {"seed": 0}, "config": {}})
    store.set_status("k", "running")
    assert store.status("k") == "running" and not store.is_finished("k")
    store.finish("k", {"acc": 0.5}, wall_seconds=1.0)
    assert store.is_finished("k")
    rows = store.finished_runs()
    assert rows[0]["metrics"]["acc"] == 0.5 and rows[0]["params"] == {"seed": 0}
    assert store.finished_runs(stage="other") == []


def test_run_files_are_readable_by_collaborators_under_umask_022(tmp_path):
    import os
    import stat

    before = os.umask(0o022)
    try:
        store = RunStore("toy", tmp_path)
        store.finish("run", {"acc": 1.0}, wall_seconds=1.0)
    finally:
        os.umask(before)
    for name in ("metrics.json", "status.json"):
        assert stat.S_IMODE((store.run_dir("run") / name).stat().st_mode) == 0o644


def test_a_running_run_whose_process_died_shows_as_interrupted(tmp_path):
    """After kill -9 the status file still says "running"; its pid is gone, so status says interrupted."""
    import subprocess
    import sys

    store = RunStore("toy", tmp_path)
    store.set_status("alive", "running")  # this very process
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    store.set_status("killed", "running")
    record = json.loads((store.run_dir("killed") / "status.json").read_text())
    record["pid"] = int(dead.stdout)
    atomic_write_json(store.run_dir("killed") / "status.json", record)
    assert store.status("alive") == "running"
    assert store.status("killed") == "interrupted"
    record["host"] = "another-host"  # a process on another host cannot be checked from here
    atomic_write_json(store.run_dir("killed") / "status.json", record)
    assert store.status("killed") == "running"
