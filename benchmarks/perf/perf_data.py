"""Data pipeline timings: cold vs warm builds of the embedded datasets, and train-loader throughput.

Cold = built from scratch into an empty temporary cache (``TSUITE_CACHE``), including the font scan
and the Fashion-MNIST decode; warm = the same call again, served from the cache files (in-process
memos cleared). Rows: impl "ours" is the warm (cached) build, "cold build" the first one, so the
harness ratio is the cache's speed-up. Loader rows time one pass over a train loader (images/s in
``note``); for Fashion-MNIST a plain ``TensorDataset`` of pre-normalised floats is the peer.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, TensorDataset

QUICK_ALPHABETS = ["Armenian", "Georgian", "Cherokee", "Greek and Coptic", "Cyrillic", "Thai"]


def _clear_memos() -> None:
    from datamodules import fashion_mnist, glyphs, scenes

    glyphs._MEMO.clear()
    glyphs._SCANS.clear()
    scenes.texture_pools.cache_clear()
    scenes.photo_pool.cache_clear()
    fashion_mnist.fashion_mnist_stats.cache_clear()


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def build_rows(quick: bool) -> list[dict]:
    from datamodules.glyphs import build_glyphs
    from datamodules.scenes import build_scenes

    glyph_kwargs = dict(progress=False)
    if quick:
        glyph_kwargs.update(alphabets=QUICK_ALPHABETS)
    n_scenes = 200 if quick else 2000
    rows = []
    previous = os.environ.get("TSUITE_CACHE")
    with tempfile.TemporaryDirectory(prefix="perf-data-") as cache:
        os.environ["TSUITE_CACHE"] = cache
        try:
            _clear_memos()
            cold, glyphs = _timed(lambda: build_glyphs(**glyph_kwargs))
            _clear_memos()
            warm, _ = _timed(lambda: build_glyphs(**glyph_kwargs))
            case = f"glyphs {glyphs.num_alphabets} alphabets {glyphs.num_chars} chars 28px"
            note = f"{len(glyphs.images)} images; cold includes the font scan"
            rows += [
                dict(topic="data", case=case, impl="cold build", seconds=cold, note=note),
                dict(topic="data", case=case, impl="ours", seconds=warm, note="cached .npz"),
            ]
            for domain in ("source", "target"):
                _clear_memos()
                if domain == "target":
                    build_glyphs(progress=False)  # target shapes need the default glyph set: not timed
                    _clear_memos()
                cold, _ = _timed(lambda d=domain: build_scenes(d, "train", n_scenes))
                _clear_memos()
                warm, _ = _timed(lambda d=domain: build_scenes(d, "train", n_scenes))
                case = f"scenes {domain} N={n_scenes} 64px"
                note = "cold includes the Fashion-MNIST decode" if domain == "source" else "glyphs prebuilt"
                rows += [
                    dict(topic="data", case=case, impl="cold build", seconds=cold, note=note),
                    dict(topic="data", case=case, impl="ours", seconds=warm, note="cached .npz"),
                ]
        finally:
            if previous is None:
                os.environ.pop("TSUITE_CACHE", None)
            else:
                os.environ["TSUITE_CACHE"] = previous
            _clear_memos()
    return rows


def _epoch_seconds(loader, max_batches: int, count: Callable[[object], int]) -> tuple[float, int]:
    start, images = time.perf_counter(), 0
    for k, batch in enumerate(loader):
        images += count(batch)
        if k + 1 >= max_batches:
            break
    return time.perf_counter() - start, images


def loader_rows(quick: bool) -> list[dict]:
    from datamodules.digits import DigitsDataModule
    from datamodules.fashion_mnist import FashionMNISTDataModule
    from datamodules.glyphs import GlyphDataModule
    from datamodules.scenes import SceneDataModule
    from datamodules.tasks import FewShotDataModule

    max_batches = 20 if quick else 100
    repeats = 3
    modules = {
        "fashion_mnist bs=128": FashionMNISTDataModule(n_train=20_000, batch_size=128),
        "glyphs 40 classes bs=64": GlyphDataModule(n_classes=40, batch_size=64),
        "scenes source bs=32": SceneDataModule("source", n_train=2000, batch_size=32),
        "digits 28px bs=64": DigitsDataModule(image_size=28, batch_size=64),
        "few_shot 5w1s15q B=16": FewShotDataModule(ways=5, shots=1, queries=15, meta_batch_size=16),
    }

    def count(batch) -> int:
        if isinstance(batch, dict):
            return len(batch["image"])
        if hasattr(batch, "support_x"):
            return batch.support_x.shape[0] * (batch.support_x.shape[1] + batch.query_x.shape[1])
        return len(batch[0])

    rows = []
    for case, dm in modules.items():
        dm.setup()
        runs = [_epoch_seconds(dm.train_dataloader(), max_batches, count) for _ in range(repeats)]
        seconds = statistics.median(r[0] for r in runs)
        images = runs[0][1]
        rows.append(
            dict(
                topic="data-loader",
                case=case,
                impl="ours",
                seconds=seconds,
                note=f"{images} images, {images / seconds:,.0f} images/s",
            )
        )
        if case.startswith("fashion_mnist"):
            dataset = dm.dataset("train")
            floats = torch.stack([dataset[i][0] for i in range(len(dataset))])
            peer = DataLoader(
                TensorDataset(floats, dataset.labels),
                batch_size=128,
                shuffle=True,
                generator=torch.Generator().manual_seed(0),
            )
            runs = [_epoch_seconds(peer, max_batches, count) for _ in range(repeats)]
            seconds = statistics.median(r[0] for r in runs)
            rows.append(
                dict(
                    topic="data-loader",
                    case=case,
                    impl="TensorDataset (floats)",
                    seconds=seconds,
                    note=f"{runs[0][1] / seconds:,.0f} images/s; 4x the memory",
                )
            )
    return rows


def run(quick: bool = False) -> list[dict]:
    return build_rows(quick) + loader_rows(quick)


if __name__ == "__main__":
    for row in run(quick=True):
        print(row)
