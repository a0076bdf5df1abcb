"""atomic_write: the target holds the old content or the whole new one, never a partial file."""

import pytest

from analysis.files import atomic_write


def test_the_file_is_written_and_its_directory_created(tmp_path):
    target = tmp_path / "deep" / "dir" / "out.txt"
    assert atomic_write(target, lambda tmp: tmp.write_text("hello")) == target
    assert target.read_text() == "hello"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]  # no temp file left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_the_callbacks_write_through_it():
    from callbacks import run_outputs

    assert run_outputs.atomic_write is atomic_write


def test_the_temp_file_keeps_the_suffix_so_numpy_writes_where_it_is_told(tmp_path):
    import numpy as np

    target = tmp_path / "arrays.npz"
    seen = []

    def save(tmp):
        seen.append(tmp.name)
        np.savez(tmp, x=np.arange(3))  # np.savez appends ".npz" to a name without it

    atomic_write(target, save)
    assert seen[0].endswith(".npz") and seen[0] != target.name
    with np.load(target) as data:
        assert data["x"].tolist() == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["arrays.npz"]


def test_a_durable_write_syncs_the_data_before_the_rename(tmp_path, monkeypatch):
    import os

    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    atomic_write(tmp_path / "status.json", lambda tmp: tmp.write_text("{}"))
    assert synced == []
    atomic_write(tmp_path / "status.json", lambda tmp: tmp.write_text('{"done": true}'), durable=True)
    assert len(synced) == 1 and (tmp_path / "status.json").read_text() == '{"done": true}'


def test_files_get_the_mode_the_umask_gives_not_mkstemps_0600(tmp_path):
    """Collaborators on shared storage read each other's results: 0644 under umask 022, 0640 under 027."""
    import os
    import stat

    before = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.txt", lambda p: p.write_text("x"))
        os.umask(0o027)
        atomic_write(tmp_path / "b.txt", lambda p: p.write_text("x"))
    finally:
        os.umask(before)
    mode = {name: stat.S_IMODE((tmp_path / name).stat().st_mode) for name in ("a.txt", "b.txt")}
    assert mode == {"a.txt": 0o644, "b.txt": 0o640}
