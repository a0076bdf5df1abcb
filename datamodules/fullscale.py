"""Full-scale datasets read from a user-given data root, in learn2learn's and torchvision's own layouts.

Nothing is downloaded unless ``download=True`` is passed explicitly. When files are missing, a
``MissingDatasetError`` (a ``FileNotFoundError``) names the exact path looked at, the expected layout
and the fix (``--data-root`` / ``DATA_ROOT``, or ``download=True`` when online).

Integrity is checked by existence, not by torchvision's md5 sums (hashing 170 MB on every start is
slow, and hand-extracted copies are legitimate); a truncated file fails loudly when it is parsed.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10, SVHN, OxfordIIITPet

from datamodules.fashion_mnist import ArrayDataModule, ImageArrayDataset, seeded_split
from datamodules.paths import data_root

LAYOUTS = {
    "omniglot": (
        "<root>/omniglot-py/images_background/<alphabet>/<character>/*.png   (964 characters)\n"
        "<root>/omniglot-py/images_evaluation/<alphabet>/<character>/*.png   (659 characters)\n"
        "(the layout torchvision.datasets.Omniglot / learn2learn FullOmniglot download and extract)"
    ),
    "mini_imagenet": (
        "<root>/mini-imagenet-cache-train.pkl, mini-imagenet-cache-validation.pkl,\n"
        "<root>/mini-imagenet-cache-test.pkl\n"
        "each a pickle of {'image_data': uint8 [N,84,84,3], 'class_dict': {wnid: [indices]}}\n"
        "(learn2learn MiniImagenet's files)"
    ),
    "cifar10": (
        "<root>/cifar-10-batches-py/data_batch_1 ... data_batch_5, test_batch, batches.meta\n"
        "(python pickles as in cifar-10-python.tar.gz; torchvision CIFAR10's layout)"
    ),
    "svhn": (
        "<root>/train_32x32.mat, test_32x32.mat (and extra_32x32.mat)\n"
        "MATLAB files with X uint8 [32,32,3,N] and y [N,1] (10 = digit 0); torchvision SVHN's layout"
    ),
    "oxford_pet": (
        "<root>/oxford-iiit-pet/images/<Breed_name>_<k>.jpg\n"
        "<root>/oxford-iiit-pet/annotations/trainval.txt, test.txt  (lines: 'image_id class species breed')\n"
        "<root>/oxford-iiit-pet/annotations/trimaps/<image_id>.png  (1 pet, 2 background, 3 border)\n"
        "(torchvision OxfordIIITPet's layout)"
    ),
}


class MissingDatasetError(FileNotFoundError):
    """A full-scale dataset is not where we looked; the message says where, in what layout, and the fix."""


def _missing(name: str, looked_at: Path | str, detail: str = "") -> MissingDatasetError:
    return MissingDatasetError(
        f"{name} not found: looked for {looked_at}{detail}.\nExpected layout:\n{LAYOUTS[name]}\n"
        f"Fix: pass --data-root DIR (or set DATA_ROOT=DIR) to a folder holding that layout, "
        f"or pass download=True when online to fetch it there."
    )


def resolve_root(name: str, root: str | os.PathLike | None) -> Path:
    """The data root for ``name``: the argument, else $DATA_ROOT; a clear error when neither is set."""
    resolved = data_root(root)
    if resolved is None:
        raise _missing(name, "<no data root given>", " (neither a data_root argument nor $DATA_ROOT is set)")
    return resolved


def require_files(name: str, paths: Sequence[Path]) -> None:
    for path in paths:
        if not path.exists():
            raise _missing(name, path)


# --------------------------------------------------------------------------------------------- Omniglot
class OmniglotFolder(Dataset):
    """Omniglot as learn2learn's FullOmniglot sees it: background characters first, then evaluation.

    Items are ``(float [1,S,S] in [0,1] with strokes = 1, int label)``: resized with LANCZOS and
    inverted like learn2learn's Omniglot benchmark. ``labels`` (int64) needs no image reads.
    """

    def __init__(self, root: Path, image_size: int = 28) -> None:
        base = root / "omniglot-py"
        self.files: list[Path] = []
        labels: list[int] = []
        self.characters: list[str] = []
        for part in ("images_background", "images_evaluation"):
            folder = base / part
            if not folder.is_dir():
                raise _missing("omniglot", folder)
            for alphabet in sorted(p for p in folder.iterdir() if p.is_dir()):
                for character in sorted(p for p in alphabet.iterdir() if p.is_dir()):
                    label = len(self.characters)
                    self.characters.append(f"{alphabet.name}/{character.name}")
                    for image in sorted(character.glob("*.png")):
                        self.files.append(image)
                        labels.append(label)
        if not self.files:
            raise _missing("omniglot", base, " (the folders hold no .png images)")
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.files[index]) as image:
            small = image.convert("L").resize((self.image_size, self.image_size), Image.Resampling.LANCZOS)
        pixels = torch.from_numpy(np.asarray(small, dtype=np.float32) / 255.0)
        return (1.0 - pixels).unsqueeze(0), int(self.labels[index])


def load_omniglot(
    root: str | os.PathLike | None = None, image_size: int = 28, download: bool = False
) -> OmniglotFolder:
    """All 1,623 Omniglot characters (learn2learn FullOmniglot's order) from ``<root>/omniglot-py``."""
    resolved = resolve_root("omniglot", root)
    if download:
        from torchvision.datasets import Omniglot

        for background in (True, False):
            Omniglot(str(resolved), background=background, download=True)
    return OmniglotFolder(resolved, image_size)


# --------------------------------------------------------------------------------------------- miniImageNet
MINI_IMAGENET_SPLITS = ("train", "validation", "test")


def load_mini_imagenet(root: str | os.PathLike | None = None, split: str = "train", download: bool = False):
    """miniImageNet ``split`` from learn2learn's pickle: ``ImageArrayDataset`` of [3,84,84] floats in [0,1].

    Read directly (not through ``l2l.vision.datasets.MiniImagenet``, which expands every image to
    float32 up front: 3 GB for the train split) but from exactly its files.
    """
    if split not in MINI_IMAGENET_SPLITS:
        raise ValueError(f"unknown miniImageNet split {split!r}; use one of {list(MINI_IMAGENET_SPLITS)}")
    resolved = resolve_root("mini_imagenet", root)
    path = resolved / f"mini-imagenet-cache-{split}.pkl"
    if download and not path.exists():
        from learn2learn.vision.datasets import MiniImagenet

        MiniImagenet(str(resolved), mode=split, download=True)
    require_files("mini_imagenet", [path])
    with open(path, "rb") as handle:
        data = pickle.load(handle)
    images = np.asarray(data["image_data"], dtype=np.uint8)
    labels = np.zeros(len(images), dtype=np.int64)
    for class_id, indices in enumerate(data["class_dict"].values()):  # learn2learn's index_classes order
        labels[np.asarray(indices, dtype=np.int64)] = class_id
    dataset = ImageArrayDataset(images, labels, 0.0, 1.0)
    dataset.class_names = list(data["class_dict"].keys())
    return dataset


# ------------------------------------------------------------------------------------------- torchvision sets
class CIFAR10Files(CIFAR10):
    """torchvision CIFAR10 checking that the files exist instead of their md5 sums."""

    def _check_integrity(self) -> bool:
        folder = Path(self.root) / self.base_folder
        return all((folder / name).exists() for name, _ in self.train_list + self.test_list)

    def _load_meta(self) -> None:
        with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as infile:
            self.classes = pickle.load(infile, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


class SVHNFiles(SVHN):
    """torchvision SVHN checking that the split's .mat file exists instead of its md5 sum."""

    def _check_integrity(self) -> bool:
        return (Path(self.root) / self.filename).exists()


def load_cifar10(root: str | os.PathLike | None = None, train: bool = True, download: bool = False):
    """torchvision ``CIFAR10`` (``.data`` uint8 [N,32,32,3], ``.targets``) from <root>/cifar-10-batches-py."""
    resolved = resolve_root("cifar10", root)
    if download:
        return CIFAR10(str(resolved), train=train, download=True)
    folder = resolved / CIFAR10.base_folder
    require_files(
        "cifar10",
        [folder / name for name, _ in CIFAR10.train_list + CIFAR10.test_list] + [folder / CIFAR10.meta["filename"]],
    )
    return CIFAR10Files(str(resolved), train=train)


def load_svhn(root: str | os.PathLike | None = None, split: str = "train", download: bool = False):
    """torchvision ``SVHN`` (``.data`` uint8 [N,3,32,32], ``.labels`` 0..9) from <root>/<split>_32x32.mat."""
    if split not in SVHN.split_list:
        raise ValueError(f"unknown SVHN split {split!r}; use one of {list(SVHN.split_list)}")
    resolved = resolve_root("svhn", root)
    if download:
        return SVHN(str(resolved), split=split, download=True)
    require_files("svhn", [resolved / SVHN.split_list[split][1]])
    return SVHNFiles(str(resolved), split=split)


def load_oxford_pet(
    root: str | os.PathLike | None = None,
    split: str = "trainval",
    target_types: str | Sequence[str] = "category",
    download: bool = False,
):
    """torchvision ``OxfordIIITPet`` (PIL images; category 0..36 and/or trimap), <root>/oxford-iiit-pet."""
    if split not in ("trainval", "test"):
        raise ValueError(f"unknown Oxford-IIIT Pet split {split!r}; use 'trainval' or 'test'")
    resolved = resolve_root("oxford_pet", root)
    if not download:
        base = resolved / "oxford-iiit-pet"
        require_files("oxford_pet", [base / "images", base / "annotations" / f"{split}.txt"])
    return OxfordIIITPet(str(resolved), split=split, target_types=target_types, download=download)


# --------------------------------------------------------------------------------------------- datamodules
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
SVHN_MEAN, SVHN_STD = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class _ArrayClassificationDataModule(ArrayDataModule):
    """CIFAR-10 / SVHN style: whole uint8 arrays in memory, seeded validation split from the train set."""

    dataset_name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __init__(
        self,
        data_root: str | None = None,
        seed: int = 0,
        batch_size: int = 128,
        val_fraction: float = 0.1,
        n_train: int | None = None,
        download: bool = False,
        input_transform=None,
        label_transform=None,
        num_workers: int = 0,
    ) -> None:
        super().__init__(seed, batch_size, num_workers, input_transform, label_transform)
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction={val_fraction} must lie in [0, 1)")
        self.data_root, self.val_fraction, self.n_train, self.download = (
            data_root,
            val_fraction,
            n_train,
            download,
        )
        self.num_classes = 10
        self.image_shape = (3, 32, 32)

    def arrays(self, train: bool) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def build_datasets(self) -> dict[str, Dataset]:
        images, labels = self.arrays(train=True)
        n_pool = len(labels)
        n_val = int(round(self.val_fraction * (self.n_train or n_pool)))
        n_train = self.n_train or n_pool - n_val
        if n_train + n_val > n_pool or n_train < 1:
            raise ValueError(f"n_train={self.n_train} + validation {n_val} exceed the {n_pool} training images")
        val_idx, train_idx = seeded_split(n_pool, n_val, n_train, self.seed)
        test_images, test_labels = self.arrays(train=False)
        parts = {
            "train": (images[train_idx], labels[train_idx]),
            "val": (images[val_idx], labels[val_idx]),
            "test": (test_images, test_labels),
        }
        return {
            split: ImageArrayDataset(x, self.transform_labels(y, split), self.mean, self.std, self.input_transform)
            for split, (x, y) in parts.items()
        }


class CIFAR10DataModule(_ArrayClassificationDataModule):
    """CIFAR-10 (3 x 32 x 32, 10 classes) from a data root in torchvision's layout."""

    dataset_name, mean, std = "cifar10", CIFAR10_MEAN, CIFAR10_STD

    def __init__(
        self,
        data_root: str | None = None,
        seed: int = 0,
        batch_size: int = 128,
        val_fraction: float = 0.1,
        n_train: int | None = None,
        download: bool = False,
        input_transform=None,
        label_transform=None,
        num_workers: int = 0,
    ) -> None:
        super().__init__(
            data_root,
            seed,
            batch_size,
            val_fraction,
            n_train,
            download,
            input_transform,
            label_transform,
            num_workers,
        )
        self.save_hyperparameters()

    def arrays(self, train: bool) -> tuple[np.ndarray, np.ndarray]:
        dataset = load_cifar10(self.data_root, train=train, download=self.download)
        return np.asarray(dataset.data), np.asarray(dataset.targets, dtype=np.int64)


class SVHNDataModule(_ArrayClassificationDataModule):
    """SVHN cropped digits (3 x 32 x 32, labels 0..9) from a data root in torchvision's layout."""

    dataset_name, mean, std = "svhn", SVHN_MEAN, SVHN_STD

    def __init__(
        self,
        data_root: str | None = None,
        seed: int = 0,
        batch_size: int = 128,
        val_fraction: float = 0.1,
        n_train: int | None = None,
        download: bool = False,
        input_transform=None,
        label_transform=None,
        num_workers: int = 0,
    ) -> None:
        super().__init__(
            data_root,
            seed,
            batch_size,
            val_fraction,
            n_train,
            download,
            input_transform,
            label_transform,
            num_workers,
        )
        self.save_hyperparameters()

    def arrays(self, train: bool) -> tuple[np.ndarray, np.ndarray]:
        dataset = load_svhn(self.data_root, split="train" if train else "test", download=self.download)
        return np.ascontiguousarray(np.asarray(dataset.data).transpose(0, 2, 3, 1)), np.asarray(dataset.labels)


class PetDataset(Dataset):
    """Oxford-IIIT Pet items resized to S x S: classification ``(image, label)`` or segmentation dicts; images
    normalised by ``mean``/``std`` (ImageNet's by default; (0, 0, 0)/(1, 1, 1) keeps them in [0, 1])."""

    def __init__(self, pets, image_size: int, task: str, indices: Sequence[int] | None = None,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.pets = pets
        self.image_size = image_size
        self.task = task
        self.indices = list(range(len(pets))) if indices is None else list(indices)
        self.labels = torch.tensor([pets._labels[i] for i in self.indices], dtype=torch.int64)
        self.mean = torch.tensor(tuple(mean), dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(tuple(std), dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        i = self.indices[index]
        size = (self.image_size, self.image_size)
        with Image.open(self.pets._images[i]) as raw:
            image = np.asarray(raw.convert("RGB").resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
        image = (torch.from_numpy(image).permute(2, 0, 1) / 255.0 - self.mean) / self.std
        if self.task == "classification":
            return image, self.labels[index]
        with Image.open(self.pets._segs[i]) as trimap:
            tri = np.asarray(trimap.resize(size, Image.Resampling.NEAREST))
        mask = torch.from_numpy((tri != 2).astype(np.int64))  # pet and its border = 1, background = 0
        return {"image": image, "mask": mask, "label": self.labels[index]}


class OxfordPetDataModule(ArrayDataModule):
    """Oxford-IIIT Pet: 37-breed classification, or pet/background segmentation (dict batches like scenes).

    The validation split is ``val_fraction`` of trainval, drawn with ``split_seed`` (default: ``seed``).
    For transfer studies: ``n_train`` / ``n_val`` / ``n_test`` cap the labelled pool, the validation and the
    test set (None = all); ``label_fraction`` keeps that share of the pool, drawn with ``seed`` (so a fixed
    ``split_seed`` gives every seed the same validation set and its own labelled subset); ``min_train_batches``
    repeats a small subset so an epoch has at least that many batches; ``mean``/``std`` as in PetDataset.
    """

    def __init__(
        self,
        data_root: str | None = None,
        task: str = "segmentation",
        image_size: int = 128,
        seed: int = 0,
        batch_size: int = 32,
        val_fraction: float = 0.1,
        download: bool = False,
        num_workers: int = 0,
        split_seed: int | None = None,
        n_train: int | None = None,
        n_val: int | None = None,
        n_test: int | None = None,
        label_fraction: float = 1.0,
        min_train_batches: int = 0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__(seed, batch_size, num_workers, min_train_batches=min_train_batches)
        self.save_hyperparameters()
        if task not in ("classification", "segmentation"):
            raise ValueError(f"unknown task {task!r}; use 'classification' or 'segmentation'")
        if not 0.0 < label_fraction <= 1.0:
            raise ValueError(f"label_fraction={label_fraction} must lie in (0, 1] (the share of the labelled pool)")
        self.data_root, self.task, self.image_size = data_root, task, image_size
        self.val_fraction, self.download = val_fraction, download
        self.split_seed = seed if split_seed is None else split_seed
        self.caps = {"train": n_train, "val": n_val, "test": n_test}
        self.label_fraction = label_fraction
        self.mean, self.std = tuple(mean), tuple(std)
        self.num_classes = 37
        self.image_shape = (3, image_size, image_size)

    def _cap(self, indices: np.ndarray, split: str) -> np.ndarray:
        cap = self.caps[split]
        return indices if cap is None else indices[: int(cap)]

    @property
    def n_labelled(self) -> int:
        return len(self.dataset("train"))

    def build_datasets(self) -> dict[str, Dataset]:
        targets = ["category", "segmentation"]
        trainval = load_oxford_pet(self.data_root, "trainval", targets, self.download)
        n_val = int(round(self.val_fraction * len(trainval)))
        val_idx, train_idx = seeded_split(len(trainval), n_val, None, self.split_seed)
        train_idx = self._cap(train_idx, "train")
        if self.label_fraction < 1.0:
            keep = max(1, int(round(self.label_fraction * len(train_idx))))
            train_idx = np.sort(np.random.default_rng(self.seed).permutation(train_idx)[:keep])
        test = load_oxford_pet(self.data_root, "test", targets, self.download)
        test_idx = self._cap(np.arange(len(test)), "test")
        norm = {"mean": self.mean, "std": self.std}
        return {
            "train": PetDataset(trainval, self.image_size, self.task, train_idx, **norm),
            "val": PetDataset(trainval, self.image_size, self.task, self._cap(val_idx, "val"), **norm),
            "test": PetDataset(test, self.image_size, self.task, test_idx, **norm),
        }
