"""Full-scale loaders on tiny fixtures written in each library's exact on-disk layout."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from datamodules.fullscale import (
    CIFAR10DataModule,
    MissingDatasetError,
    OxfordPetDataModule,
    SVHNDataModule,
    load_cifar10,
    load_mini_imagenet,
    load_omniglot,
    load_oxford_pet,
    load_svhn,
)
from datamodules.tasks import FewShotDataModule

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------------------------- fixtures
def write_cifar10(root: Path, per_batch: int = 20) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        batch = {
            "data": RNG.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            "labels": RNG.integers(0, 10, per_batch).tolist(),
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))


def write_svhn(root: Path, n: int = 30) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        x = RNG.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = RNG.integers(1, 11, (n, 1)).astype(np.uint8)  # SVHN writes digit 0 as 10
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})


def write_mini_imagenet(root: Path, classes: int = 6, per_class: int = 4) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation", "test"):
        n = classes * per_class
        class_dict = {f"n0{split[:2]}{c:05d}": list(range(c * per_class, (c + 1) * per_class)) for c in range(classes)}
        data = {"image_data": RNG.integers(0, 256, (n, 84, 84, 3), dtype=np.uint8), "class_dict": class_dict}
        (root / f"mini-imagenet-cache-{split}.pkl").write_bytes(pickle.dumps(data))


def write_omniglot(root: Path, alphabets: int = 2, characters: int = 12, drawings: int = 3) -> None:
    for part in ("images_background", "images_evaluation"):
        for a in range(alphabets):
            for c in range(characters):
                folder = root / "omniglot-py" / part / f"{part[7:11]}_alphabet{a}" / f"character{c + 1:02d}"
                folder.mkdir(parents=True)
                for d in range(drawings):
                    stroke = np.full((40, 40), 255, dtype=np.uint8)
                    stroke[5 + c : 30 + c, 10 + d] = 0  # black stroke on white, as in Omniglot
                    Image.fromarray(stroke).save(folder / f"{c:04d}_{d:02d}.png")


def write_oxford_pet(root: Path, per_split: int = 6) -> None:
    base = root / "oxford-iiit-pet"
    (base / "images").mkdir(parents=True)
    (base / "annotations" / "trimaps").mkdir(parents=True)
    breeds = ["Abyssinian", "american_bulldog", "Bengal"]
    for split in ("trainval", "test"):
        lines = []
        for k in range(per_split):
            breed = breeds[k % 3]
            image_id = f"{breed}_{split}{k}"
            Image.fromarray(RNG.integers(0, 256, (30 + k, 40, 3), dtype=np.uint8)).save(
                base / "images" / f"{image_id}.jpg"
            )
            trimap = np.full((30 + k, 40), 2, dtype=np.uint8)
            trimap[5:20, 10:30] = 1
            trimap[4, 10:30] = 3
            Image.fromarray(trimap).save(base / "annotations" / "trimaps" / f"{image_id}.png")
            lines.append(f"{image_id} {breeds.index(breed) + 1} {1 if breed[0].isupper() else 2} 1")
        (base / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("loader", "name", "expected_file"),
    [
        (lambda r: load_cifar10(r), "cifar10", "cifar-10-batches-py/data_batch_1"),
        (lambda r: load_svhn(r, "train"), "svhn", "train_32x32.mat"),
        (lambda r: load_mini_imagenet(r, "train"), "mini_imagenet", "mini-imagenet-cache-train.pkl"),
        (lambda r: load_omniglot(r), "omniglot", "omniglot-py/images_background"),
        (lambda r: load_oxford_pet(r), "oxford_pet", "oxford-iiit-pet/images"),
    ],
)
def test_missing_files_name_the_exact_path_the_layout_and_the_fix(tmp_path, loader, name, expected_file):
    with pytest.raises(FileNotFoundError) as info:
        loader(tmp_path)
    message = str(info.value)
    assert isinstance(info.value, MissingDatasetError)
    assert str(tmp_path / expected_file) in message
    assert "Expected layout" in message and "--data-root" in message and "DATA_ROOT" in message
    assert "download=True" in message
    assert list(tmp_path.iterdir()) == []  # nothing was created or downloaded


def test_no_data_root_at_all_says_how_to_give_one(monkeypatch):
    monkeypatch.delenv("DATA_ROOT", raising=False)
    with pytest.raises(MissingDatasetError, match="no data root given"):
        load_cifar10(None)


def test_data_root_comes_from_the_environment(tmp_path, monkeypatch):
    write_svhn(tmp_path)
    monkeypatch.setenv("DATA_ROOT", str(tmp_path))
    assert len(load_svhn(None, "test")) == 30


# --------------------------------------------------------------------------------------------- loaders
def test_cifar10_fixture_loads_through_torchvision(tmp_path):
    write_cifar10(tmp_path)
    train, test = load_cifar10(tmp_path, train=True), load_cifar10(tmp_path, train=False)
    assert train.data.shape == (100, 32, 32, 3) and len(test) == 20
    assert train.classes[0] == "airplane"
    dm = CIFAR10DataModule(str(tmp_path), batch_size=16, val_fraction=0.2)
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(dm.dataset("train")) == 80 and len(dm.dataset("val")) == 20 and len(dm.dataset("test")) == 20


def test_svhn_fixture_maps_label_ten_to_digit_zero(tmp_path):
    write_svhn(tmp_path)
    raw = scipy.io.loadmat(tmp_path / "train_32x32.mat")["y"].ravel()
    svhn = load_svhn(tmp_path, "train")
    assert svhn.data.shape == (30, 3, 32, 32)
    assert np.array_equal(svhn.labels, np.where(raw == 10, 0, raw))
    dm = SVHNDataModule(str(tmp_path), batch_size=8, val_fraction=0.0)
    dm.setup()
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (8, 3, 32, 32) and int(y.max()) <= 9


def test_mini_imagenet_fixture_reads_learn2learns_pickle(tmp_path):
    write_mini_imagenet(tmp_path)
    train = load_mini_imagenet(tmp_path, "train")
    assert len(train) == 24 and train.class_names[0] == "n0tr00000"
    x, y = train[5]
    assert x.shape == (3, 84, 84) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and int(y) == 1
    dm = FewShotDataModule("mini_imagenet", ways=3, shots=1, queries=2, meta_batch_size=2, data_root=str(tmp_path))
    batch = next(iter(dm.train_dataloader()))
    assert batch.support_x.shape == (2, 3, 3, 84, 84) and batch.query_y.shape == (2, 6)


def test_omniglot_fixture_keeps_full_omniglots_class_order(tmp_path):
    write_omniglot(tmp_path)
    omniglot = load_omniglot(tmp_path, image_size=28)
    assert len(omniglot.characters) == 48 and len(omniglot) == 144
    assert omniglot.characters[0].startswith("back") and omniglot.characters[24].startswith("eval")
    x, y = omniglot[4]
    assert x.shape == (1, 28, 28) and y == 1
    assert float(x.mean()) < 0.3 and float(x.max()) > 0.5  # inverted: strokes bright on black
    dm = FewShotDataModule("omniglot", ways=2, shots=1, queries=1, meta_batch_size=2, data_root=str(tmp_path))
    dm.setup()
    classes = {
        s: set(dm.class_datasets[s].dataset.labels[dm.class_datasets[s].indices].tolist())
        for s in ("train", "val", "test")
    }
    assert not classes["train"] & classes["test"] and sum(map(len, classes.values())) == 48
    assert next(iter(dm.train_dataloader())).support_x.shape == (2, 2, 1, 28, 28)


def test_oxford_pet_fixture_gives_classification_and_segmentation(tmp_path):
    write_oxford_pet(tmp_path)
    pets = load_oxford_pet(tmp_path, "trainval")
    assert len(pets) == 6
    segmentation = OxfordPetDataModule(
        str(tmp_path), task="segmentation", image_size=32, batch_size=3, val_fraction=0.34
    )
    segmentation.setup()
    batch = next(iter(segmentation.test_dataloader()))
    assert batch["image"].shape == (3, 3, 32, 32) and batch["mask"].dtype == torch.int64
    assert set(batch["mask"].unique().tolist()) == {0, 1}
    classification = OxfordPetDataModule(str(tmp_path), task="classification", image_size=32, batch_size=3)
    classification.setup()
    x, y = next(iter(classification.test_dataloader()))
    assert x.shape == (3, 3, 32, 32) and y.tolist() == [0, 1, 2]


def test_oxford_pet_for_transfer_fixes_validation_and_draws_the_labelled_subset_by_seed(tmp_path):
    """split_seed fixes the validation images for every seed; the seed draws label_fraction of the capped pool;
    mean 0 / std 1 keeps images in [0, 1]; small subsets repeat to min_train_batches batches per epoch."""
    write_oxford_pet(tmp_path, per_split=12)

    def pets(seed: int) -> OxfordPetDataModule:
        dm = OxfordPetDataModule(str(tmp_path), image_size=32, seed=seed, batch_size=2, val_fraction=0.25,
                                 split_seed=0, n_train=8, n_test=5, label_fraction=0.5, min_train_batches=3,
                                 mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
        dm.setup()
        return dm

    a, b = pets(0), pets(1)
    assert a.dataset("val").indices == b.dataset("val").indices and len(a.dataset("val")) == 3
    assert a.n_labelled == b.n_labelled == 4 and len(a.dataset("test")) == 5
    assert a.dataset("train").indices == pets(0).dataset("train").indices  # the seed fixes the subset
    assert a.dataset("train").indices != b.dataset("train").indices  # another seed, another subset
    assert not set(a.dataset("train").indices) & set(a.dataset("val").indices)
    batch = next(iter(a.test_dataloader()))
    assert 0.0 <= float(batch["image"].min()) and float(batch["image"].max()) <= 1.0
    assert len(a.train_dataloader()) >= 3
