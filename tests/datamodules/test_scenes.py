"""Composed segmentation scenes: exact masks, two visibly different domains, the DataModule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from datamodules.scenes import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TARGET_KINDS,
    SceneDataModule,
    build_scenes,
    compose,
    fashion_silhouette,
    procedural_shape,
    read_gimp_pattern,
    texture_pools,
)

N = 48


@pytest.fixture(scope="module", params=["source", "target"])
def scenes(request):
    return build_scenes(request.param, "train", N, seed=0)


def test_compose_puts_the_foreground_exactly_under_the_mask():
    rng = np.random.default_rng(0)
    background, foreground = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    mask = rng.random((16, 16)) < 0.3
    image = compose(background, foreground, mask)
    assert np.array_equal(image[mask], foreground[mask]) and np.array_equal(image[~mask], background[~mask])


def test_scene_arrays_have_the_documented_types(scenes):
    assert scenes.images.shape == (N, 64, 64, 3) and scenes.images.dtype == np.uint8
    assert scenes.masks.shape == (N, 64, 64) and set(np.unique(scenes.masks)) <= {0, 1}
    assert scenes.labels.dtype == np.int64
    assert 0 <= scenes.labels.min() and scenes.labels.max() < scenes.num_classes


def test_every_mask_covers_an_object_and_leaves_background(scenes):
    area = scenes.masks.reshape(N, -1).mean(axis=1)
    assert area.min() > 0.01 and area.max() < 0.9


def test_mask_boundaries_are_image_edges(scenes):
    """Where the mask changes, the image changes more than elsewhere: the mask is aligned with the object."""
    gray = scenes.images.astype(np.float32).mean(axis=3)
    gradient = np.hypot(ndimage.sobel(gray, axis=1), ndimage.sobel(gray, axis=2))
    boundary = np.stack([m ^ ndimage.binary_erosion(m) for m in scenes.masks.astype(bool)])
    assert gradient[boundary].mean() > 1.5 * gradient[~boundary].mean()


def test_pixels_under_the_mask_are_distributed_differently_from_the_background(scenes):
    inside = scenes.images[scenes.masks.astype(bool)].astype(np.float32)
    outside = scenes.images[~scenes.masks.astype(bool)].astype(np.float32)
    difference = np.abs(inside.mean(0) - outside.mean(0)).max() + np.abs(inside.std(0) - outside.std(0)).max()
    assert difference > 5


def test_source_masks_are_the_filled_garment_silhouettes():
    garment = np.zeros((28, 28), dtype=np.uint8)
    garment[4:24, 6:22] = 200
    garment[10:14, 10:14] = 0  # a dark hole inside the garment is still object
    mask, shade = fashion_silhouette(garment, 56)
    assert mask.dtype == bool and mask[20:28, 20:28].all() and not mask[:4].any()
    assert shade[24, 24] < 0.1 < shade[12, 16]


def test_procedural_shapes_are_filled_and_centred():
    rng = np.random.default_rng(0)
    for kind in TARGET_KINDS[1:]:
        shape = procedural_shape(kind, 40, rng)
        assert shape.dtype == bool and 0.05 < shape.mean() < 0.8
        assert not ndimage.binary_fill_holes(shape)[~shape].any()
        cy, cx = ndimage.center_of_mass(shape)
        assert abs(cy - 20) < 8 and abs(cx - 20) < 8
    with pytest.raises(ValueError, match="ellipse"):
        procedural_shape("hexagon", 40, rng)


def test_the_target_domain_looks_different_from_the_source():
    source, target = build_scenes("source", "train", N), build_scenes("target", "train", N)

    def saturation(pixels):  # pixels [P, 3]
        return np.asarray(Image.fromarray(pixels[None]).convert("HSV"))[..., 1].mean()

    background_s = saturation(source.images[source.masks == 0])
    background_t = saturation(target.images[target.masks == 0])
    assert background_t < 0.7 * background_s


def test_scenes_are_deterministic_per_seed_and_index():
    a = build_scenes("source", "val", 6, seed=3, use_cache=False)
    b = build_scenes("source", "val", 4, seed=3, use_cache=False)
    c = build_scenes("source", "val", 6, seed=4, use_cache=False)
    assert np.array_equal(a.images[:4], b.images) and np.array_equal(a.masks[:4], b.masks)
    assert not np.array_equal(a.images, c.images)


def test_gimp_pattern_reader_and_pools():
    rgb = np.random.default_rng(0).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    import struct
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "t.pat"
        name = b"test\x00"
        path.write_bytes(struct.pack(">5I", 24 + len(name), 1, 5, 3, 3) + b"GPAT" + name + rgb.tobytes())
        assert np.array_equal(read_gimp_pattern(path), rgb)
    pool_a, pool_b = texture_pools()
    assert len(pool_a) > 40 and len(pool_b) > 40


def test_datamodule_batches_and_label_fraction():
    dm = SceneDataModule("source", n_train=40, n_val=8, n_test=8, batch_size=8, label_fraction=0.25)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "mask", "label"}
    assert batch["image"].shape == (8, 3, 64, 64) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (8, 64, 64) and batch["mask"].dtype == torch.int64
    assert batch["label"].dtype == torch.int64 and dm.num_classes == 10
    assert len(dm.dataset("train")) == 10 and len(dm.dataset("test")) == 8
    # the normalisation is undone exactly by the documented mean/std
    raw = build_scenes("source", "train", 40)
    first = dm.dataset("train").images[0]
    assert any(np.array_equal(first.permute(1, 2, 0).numpy(), img) for img in raw.images)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    restored = (dm.dataset("train")[0]["image"] * std + mean) * 255
    assert torch.allclose(restored, first.float(), atol=1e-3)
    same = SceneDataModule("source", n_train=40, n_val=8, n_test=8, label_fraction=0.25)
    other = SceneDataModule("source", n_train=40, n_val=8, n_test=8, label_fraction=0.25, seed=1)
    same.setup(), other.setup()
    assert torch.equal(same.dataset("train").images, dm.dataset("train").images)
    assert not torch.equal(other.dataset("train").images, dm.dataset("train").images)


def test_target_datamodule_labels_are_shape_kinds():
    dm = SceneDataModule("target", n_train=16, n_val=4, n_test=4, batch_size=16)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert dm.num_classes == len(TARGET_KINDS) and int(batch["label"].max()) < len(TARGET_KINDS)


@pytest.mark.parametrize(("kwargs", "message"), [({"domain": "sky"}, "source"), ({"label_fraction": 0}, r"\(0, 1\]")])
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SceneDataModule(**kwargs)


def test_min_train_batches_repeats_a_small_labelled_subset_whole():
    """16 labelled scenes, batch 8, at least 4 batches: every scene appears exactly twice per epoch."""
    dm = SceneDataModule(domain="target", n_train=64, n_val=8, n_test=8, label_fraction=0.25, seed=0,
                         image_size=32, batch_size=8, min_train_batches=4)
    images = torch.cat([batch["image"] for batch in dm.train_dataloader()])
    assert len(images) == 32
    distinct, counts = torch.unique(images.flatten(1), dim=0, return_counts=True)
    assert len(distinct) == 16 and counts.tolist() == [2] * 16
    full = SceneDataModule(domain="target", n_train=64, n_val=8, n_test=8, label_fraction=1.0, seed=0,
                           image_size=32, batch_size=8, min_train_batches=4)
    assert len(full.train_dataloader()) == 8  # already 8 batches: not repeated
