"""Cache files: a corrupt one is detected (zip CRC-32), named, removed and rebuilt bit-identically."""

from __future__ import annotations

import numpy as np
import pytest

from datamodules.fashion_mnist import load_fashion_mnist
from datamodules.paths import cache_dir, read_cache


def _read(path):
    with np.load(path, allow_pickle=False) as data:
        return data["x"]


@pytest.fixture
def cache_file(tmp_path):
    path = tmp_path / "c.npz"
    np.savez(path, x=np.arange(10_000, dtype=np.int64))
    return path


def test_an_intact_cache_is_read(cache_file):
    assert read_cache(cache_file, _read).sum() == sum(range(10_000))


def test_a_truncated_cache_is_named_removed_and_reported_missing(cache_file, capsys):
    data = cache_file.read_bytes()
    cache_file.write_bytes(data[: len(data) // 2])
    assert read_cache(cache_file, _read) is None
    assert f"cache file {cache_file} is corrupt" in capsys.readouterr().err
    assert not cache_file.exists()


def test_a_flipped_byte_fails_the_crc_and_never_yields_wrong_arrays(cache_file, capsys):
    data = bytearray(cache_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the array's bytes
    cache_file.write_bytes(bytes(data))
    assert read_cache(cache_file, _read) is None
    assert "CRC" in capsys.readouterr().err


def test_a_corrupt_fashion_mnist_cache_is_rebuilt_bit_identically(tmp_path, monkeypatch):
    monkeypatch.setenv("TSUITE_CACHE", str(tmp_path))
    images, labels = load_fashion_mnist("test")
    (cached,) = cache_dir("fashion_mnist").glob("test-*.npz")
    cached.write_bytes(cached.read_bytes()[:1000])
    again_images, again_labels = load_fashion_mnist("test")
    assert np.array_equal(images, again_images) and np.array_equal(labels, again_labels)
    assert read_cache(cached, lambda p: np.load(p)["labels"]) is not None  # rewritten whole
