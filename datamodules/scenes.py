"""Segmentation scenes with exact per-pixel masks, composed from embedded real images.

Source domain: a Fashion-MNIST object silhouette (thresholded, holes filled), scaled and placed at
random, filled with a colourful GIMP texture shaded by the garment's own intensities, on a crop of a
colour photo (pool A: astronaut, coffee, chelsea, rocket, motorcycle, ihc). Each scene also carries
the garment's Fashion-MNIST class, so the same scenes serve classification pretraining.

Target domain (visibly different): glyph shapes (from ``glyphs.py``) or procedural shapes (ellipse,
random polygon, star) filled with a muted GIMP texture on a tinted crop of a greyscale photo/texture
(pool B: grass, gravel, brick, camera, coins, moon). Its label is the shape kind.

Compositing is hard (no blending), so the mask is exactly the set of pixels showing the object.
Only images that ship inside the scikit-image wheel are used (nothing is downloaded). Scenes are
deterministic per (domain, split, index, scene_seed) and cached as .npz.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from scipy.ndimage import binary_fill_holes
from torch.utils.data import Dataset

from analysis.files import atomic_write
from datamodules.fashion_mnist import FASHION_MNIST_CLASSES, ArrayDataModule, check_split, load_fashion_mnist
from datamodules.glyphs import GLYPHS_VERSION, build_glyphs, config_key
from datamodules.paths import cache_dir, read_cache

SCENES_VERSION = 2  # bump when composition changes, so old caches are not reused
DOMAINS = ("source", "target")
GIMP_PATTERN_DIR = Path("/usr/share/gimp/2.0/patterns")
PHOTO_POOL_A = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "ihc.png")
PHOTO_POOL_B = ("grass.png", "gravel.png", "brick.png", "camera.png", "coins.png", "moon.png")
TARGET_KINDS = ("glyph", "ellipse", "polygon", "star")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
_FMNIST_VAL_START = 50_000  # source train scenes use Fashion-MNIST train[:50k], val scenes train[50k:]


@dataclass
class SceneSet:
    """Composed scenes: RGB uint8 images [N,S,S,3], binary masks uint8 [N,S,S], int64 labels [N]."""

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    domain: str

    @property
    def class_names(self) -> tuple[str, ...]:
        return FASHION_MNIST_CLASSES if self.domain == "source" else TARGET_KINDS

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# --------------------------------------------------------------------------------------------- pools
def read_gimp_pattern(path: Path) -> np.ndarray:
    """Decode a GIMP .pat file (header: size, version, width, height, depth, 'GPAT', name) to RGB uint8."""
    raw = path.read_bytes()
    header_size, _version, width, height, depth = struct.unpack(">5I", raw[:20])
    if raw[20:24] != b"GPAT" or depth not in (1, 2, 3, 4):
        raise ValueError(f"{path} is not a GIMP pattern file")
    pixels = np.frombuffer(raw, dtype=np.uint8, count=width * height * depth, offset=header_size)
    pixels = pixels.reshape(height, width, depth)
    if depth in (1, 2):
        pixels = np.repeat(pixels[..., :1], 3, axis=2)
    return np.ascontiguousarray(pixels[..., :3])


@lru_cache(maxsize=1)
def texture_pools() -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """GIMP patterns split by colourfulness: (pool A = the more saturated half, pool B = the rest)."""
    files = sorted(GIMP_PATTERN_DIR.rglob("*.pat"))
    if not files:
        raise FileNotFoundError(
            f"no GIMP patterns under {GIMP_PATTERN_DIR}; install them with "
            "`sudo apt-get install gimp-data gimp-data-extras`"
        )
    textures, saturation = [], []
    for path in files:
        try:
            texture = read_gimp_pattern(path)
        except (ValueError, struct.error):
            continue
        if texture.std() < 8:  # nearly flat patterns carry no texture
            continue
        textures.append(texture)
        saturation.append(np.asarray(Image.fromarray(texture).convert("HSV"))[..., 1].mean())
    order = np.argsort(saturation, kind="stable")[::-1]
    half = len(order) // 2
    return tuple(textures[i] for i in order[:half]), tuple(textures[i] for i in order[half:])


@lru_cache(maxsize=2)
def photo_pool(domain: str) -> tuple[np.ndarray, ...]:
    """Background photos bundled in the scikit-image wheel (RGB uint8, greyscale ones replicated)."""
    import skimage.data

    folder = Path(skimage.data.__file__).parent
    names = PHOTO_POOL_A if domain == "source" else PHOTO_POOL_B
    return tuple(np.asarray(Image.open(folder / name).convert("RGB")) for name in names)


# --------------------------------------------------------------------------------------------- drawing
def compose(background: np.ndarray, foreground: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Hard compositing: foreground where mask, background elsewhere (so the mask is exact)."""
    return np.where(mask.astype(bool)[..., None], foreground, background).astype(np.uint8)


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator, min_frac: float, max_frac: float) -> np.ndarray:
    """A random square crop of side in [min_frac, max_frac] x the short side, resized to size x size."""
    height, width = image.shape[:2]
    side = int(rng.uniform(min_frac, max_frac) * min(height, width))
    top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
    crop = Image.fromarray(image[top : top + side, left : left + side]).resize((size, size), Image.Resampling.BILINEAR)
    out = np.asarray(crop)
    return out[:, ::-1] if rng.random() < 0.5 else out


def texture_patch(texture: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A size x size patch of a tileable texture (tiled, randomly offset, rotated by k x 90 degrees)."""
    height, width = texture.shape[:2]
    reps = (size // height + 2, size // width + 2, 1)
    tiled = np.tile(texture, reps)
    top, left = rng.integers(0, height), rng.integers(0, width)
    return np.ascontiguousarray(np.rot90(tiled[top : top + size, left : left + size], k=int(rng.integers(4))))


def resize_float(image: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image.astype(np.float32)).resize((size, size), Image.Resampling.BILINEAR))


def fashion_silhouette(image: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Mask (bool, holes filled) and shading (float 0..1) of a 28x28 garment scaled to size x size."""
    solid = binary_fill_holes(image > 10).astype(np.float32)
    mask = binary_fill_holes(resize_float(solid, size) > 0.5)
    shade = np.clip(resize_float(image.astype(np.float32) / 255.0, size), 0.0, 1.0)
    return mask, shade


def procedural_shape(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A filled ellipse, random star-shaped polygon or star drawn in a size x size box (bool mask)."""
    centre = size / 2
    if kind == "ellipse":
        angle = rng.uniform(0, np.pi)
        a, b = rng.uniform(0.3, 0.5) * size, rng.uniform(0.18, 0.45) * size
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        xs, ys = a * np.cos(t), b * np.sin(t)
        points = np.stack([xs * np.cos(angle) - ys * np.sin(angle), xs * np.sin(angle) + ys * np.cos(angle)], 1)
    elif kind == "polygon":
        k = int(rng.integers(3, 9))
        step = 2 * np.pi / k  # evenly spread vertices with jitter: no slivers
        angles = np.arange(k) * step + rng.uniform(-0.3, 0.3, k) * step + rng.uniform(0, 2 * np.pi)
        radii = rng.uniform(0.28, 0.5, k) * size
        points = np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)
    elif kind == "star":
        k = int(rng.integers(5, 9))
        outer = rng.uniform(0.38, 0.5) * size
        radii = np.where(np.arange(2 * k) % 2 == 0, outer, outer * rng.uniform(0.35, 0.6))
        angles = np.arange(2 * k) * np.pi / k + rng.uniform(0, np.pi)
        points = np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)
    else:
        raise ValueError(f"unknown shape kind {kind!r}; use one of {TARGET_KINDS[1:]}")
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in (points + centre)], fill=255)
    return np.asarray(canvas) > 127


# --------------------------------------------------------------------------------------------- scenes
def source_scene(index: int, split: str, seed: int, size: int, objects: np.ndarray, classes: np.ndarray):
    rng = np.random.default_rng([seed, 0, _SPLIT_CODES[split], index])
    pool_a, _ = texture_pools()
    photos = photo_pool("source")
    while True:
        k = int(rng.integers(len(objects)))
        side = int(rng.uniform(0.5, 0.9) * size)
        mask_obj, shade = fashion_silhouette(objects[k], side)
        if mask_obj.sum() >= 0.03 * size * size:
            break
    background = random_crop(photos[rng.integers(len(photos))], size, rng, 0.3, 0.9)
    texture = texture_patch(pool_a[rng.integers(len(pool_a))], side, rng).astype(np.float32)
    fill = np.clip(texture * (0.3 + 0.7 * shade[..., None]), 0, 255)
    top, left = rng.integers(0, size - side + 1), rng.integers(0, size - side + 1)
    mask = np.zeros((size, size), dtype=bool)
    mask[top : top + side, left : left + side] = mask_obj
    foreground = background.copy()
    foreground[top : top + side, left : left + side] = fill.astype(np.uint8)
    return compose(background, foreground, mask), mask.astype(np.uint8), int(classes[k])


def target_scene(index: int, split: str, seed: int, size: int, glyph_images: np.ndarray):
    rng = np.random.default_rng([seed, 1, _SPLIT_CODES[split], index])
    _, pool_b = texture_pools()
    photos = photo_pool("target")
    kind = 0 if rng.random() < 0.5 else int(rng.integers(1, len(TARGET_KINDS)))
    while True:
        side = int(rng.uniform(0.55, 0.9) * size)
        if kind == 0:
            glyph = glyph_images[rng.integers(len(glyph_images))]
            mask_obj = resize_float(glyph.astype(np.float32), side) > 100
        else:
            mask_obj = procedural_shape(TARGET_KINDS[kind], side, rng)
        if mask_obj.sum() >= 0.02 * size * size:
            break
    tint = rng.uniform(0.55, 1.0, 3)
    background = random_crop(photos[rng.integers(len(photos))], size, rng, 0.25, 0.8) * (tint / tint.max())
    texture = texture_patch(pool_b[rng.integers(len(pool_b))], side, rng)
    top, left = rng.integers(0, size - side + 1), rng.integers(0, size - side + 1)
    mask = np.zeros((size, size), dtype=bool)
    mask[top : top + side, left : left + side] = mask_obj
    foreground = background.astype(np.uint8).copy()
    foreground[top : top + side, left : left + side] = texture
    return compose(background.astype(np.uint8), foreground, mask), mask.astype(np.uint8), kind


def _read_scenes(path: Path, domain: str) -> SceneSet:
    with np.load(path, allow_pickle=False) as data:
        return SceneSet(data["images"], data["masks"], data["labels"], domain)


def build_scenes(
    domain: str, split: str, n: int, seed: int = 0, image_size: int = 64, use_cache: bool = True
) -> SceneSet:
    """``n`` scenes of ``domain`` for ``split`` (cached .npz); scene i depends on (domain, split, i, seed).

    Source objects come from Fashion-MNIST train[:50k] (train), train[50k:] (val) or test (test);
    target glyph shapes from the glyph set's train+val alphabets (train, val) or test alphabets (test).
    """
    if domain not in DOMAINS:
        raise ValueError(f"unknown scene domain {domain!r}; use one of {list(DOMAINS)}")
    check_split(split)
    if n < 1 or image_size < 16:
        raise ValueError(f"n={n} must be >= 1 and image_size={image_size} >= 16")
    key = config_key([SCENES_VERSION, GLYPHS_VERSION, domain, split, n, seed, image_size])
    path = cache_dir("scenes", key) / "scenes.npz" if use_cache else None
    cached = read_cache(path, lambda file: _read_scenes(file, domain))
    if cached is not None:
        return cached
    if domain == "source":
        images, labels = load_fashion_mnist("test" if split == "test" else "train")
        part = {"train": slice(0, _FMNIST_VAL_START), "val": slice(_FMNIST_VAL_START, None)}.get(split, slice(None))
        scenes = [source_scene(i, split, seed, image_size, images[part], labels[part]) for i in range(n)]
    else:
        glyphs = build_glyphs(progress=False)
        chars = np.concatenate([glyphs.split_chars(s) for s in (("test",) if split == "test" else ("train", "val"))])
        glyph_images = glyphs.images[np.isin(glyphs.labels, chars)]
        scenes = [target_scene(i, split, seed, image_size, glyph_images) for i in range(n)]
    result = SceneSet(
        images=np.stack([s[0] for s in scenes]),
        masks=np.stack([s[1] for s in scenes]),
        labels=np.array([s[2] for s in scenes], dtype=np.int64),
        domain=domain,
    )
    if path is not None:
        atomic_write(path, lambda tmp: np.savez(tmp, images=result.images, masks=result.masks, labels=result.labels))
    return result


# --------------------------------------------------------------------------------------------- datamodule
class SceneDataset(Dataset):
    """Items are dicts: image float [3,S,S] normalised, mask int64 [S,S] in {0,1}, label int64 []."""

    def __init__(self, scenes: SceneSet, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.images = torch.from_numpy(scenes.images).permute(0, 3, 1, 2).contiguous()
        self.masks = torch.from_numpy(scenes.masks)
        self.labels = torch.from_numpy(scenes.labels)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) * 255.0
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1) * 255.0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image = (self.images[index].float() - self.mean) / self.std
        return {"image": image, "mask": self.masks[index].long(), "label": self.labels[index]}


class SceneDataModule(ArrayDataModule):
    """Segmentation (and, for the source domain, classification) on composed scenes.

    ``scene_seed`` fixes the scenes themselves (cached, shared across runs); ``seed`` drives the
    ``label_fraction`` subsample of the training set and the loader order. Batches are dicts with
    ``image`` [B,3,S,S] float (normalised by ``mean``/``std``, ImageNet's by default), ``mask`` [B,S,S]
    int64 in {0,1} and ``label`` [B] int64.
    """

    def __init__(
        self,
        domain: str = "source",
        n_train: int = 2000,
        n_val: int = 200,
        n_test: int = 500,
        label_fraction: float = 1.0,
        seed: int = 0,
        image_size: int = 64,
        batch_size: int = 32,
        scene_seed: int = 0,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        num_workers: int = 0,
        min_train_batches: int = 0,
    ) -> None:
        super().__init__(seed, batch_size, num_workers, min_train_batches=min_train_batches)
        self.save_hyperparameters()
        if domain not in DOMAINS:
            raise ValueError(f"unknown scene domain {domain!r}; use one of {list(DOMAINS)}")
        if not 0.0 < label_fraction <= 1.0:
            raise ValueError(f"label_fraction={label_fraction} must lie in (0, 1] (the share of labelled train scenes)")
        self.domain = domain
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}
        self.label_fraction = label_fraction
        self.scene_seed = scene_seed
        self.mean, self.std = tuple(mean), tuple(std)
        self.image_size = image_size
        self.num_classes = len(FASHION_MNIST_CLASSES) if domain == "source" else len(TARGET_KINDS)
        self.image_shape = (3, image_size, image_size)

    @property
    def n_labelled(self) -> int:
        return max(1, int(round(self.label_fraction * self.sizes["train"])))

    def build_datasets(self) -> dict[str, Dataset]:
        datasets = {}
        for split, n in self.sizes.items():
            scenes = build_scenes(self.domain, split, n, self.scene_seed, self.image_size)
            if split == "train" and self.n_labelled < n:
                keep = np.sort(np.random.default_rng(self.seed).permutation(n)[: self.n_labelled])
                scenes = SceneSet(scenes.images[keep], scenes.masks[keep], scenes.labels[keep], self.domain)
            datasets[split] = SceneDataset(scenes, self.mean, self.std)
        return datasets
