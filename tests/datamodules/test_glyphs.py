"""The Omniglot-like glyph set rendered from the installed fonts, and its classification DataModule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.glyphs import (
    NOTDEF_PROBE,
    GlyphDataModule,
    GlyphRenderer,
    build_glyphs,
    find_font_files,
    render_character,
    scan_fonts,
    split_alphabets,
)

SMALL = dict(
    alphabets=["Armenian", "Georgian", "Cherokee", "Greek and Coptic"],
    instances_per_char=3,
    max_chars_per_alphabet=8,
    min_chars_per_alphabet=5,
    progress=False,
    use_cache=False,
)


@pytest.fixture(scope="module")
def glyphs():
    return build_glyphs()  # the default set, from the shared cache after its first render


def test_default_set_is_omniglot_sized(glyphs):
    assert glyphs.num_alphabets >= 30
    assert glyphs.num_chars >= 1000
    assert glyphs.images.shape == (glyphs.num_chars * 20, 28, 28) and glyphs.images.dtype == np.uint8
    assert np.array_equal(np.bincount(glyphs.labels), np.full(glyphs.num_chars, 20))
    per_alphabet = np.bincount(glyphs.char_alphabet)
    assert per_alphabet.min() >= 10 and per_alphabet.max() <= 55


def test_every_character_is_drawn_by_at_least_four_font_families(glyphs):
    fonts, _ = scan_fonts(find_font_files())
    family = {f.path.rsplit("/", 1)[1]: f.family for f in fonts}
    families_per_char = {}
    for label, font_id in zip(glyphs.labels.tolist(), glyphs.font_ids.tolist()):
        families_per_char.setdefault(label, set()).add(family[glyphs.font_names[font_id]])
    assert min(len(f) for f in families_per_char.values()) >= 4


def test_alphabet_splits_are_disjoint_and_cover_everything(glyphs):
    chars = {s: set(glyphs.split_chars(s).tolist()) for s in ("train", "val", "test")}
    assert all(chars.values())
    assert not chars["train"] & chars["val"] and not chars["train"] & chars["test"] and not chars["val"] & chars["test"]
    assert set().union(*chars.values()) == set(range(glyphs.num_chars))
    for split in ("train", "val", "test"):
        alphabets = set(glyphs.alphabet_ids[glyphs.split_indices(split)].tolist())
        assert {glyphs.alphabet_split[a] for a in alphabets} == {split}


def test_images_have_ink_inside_a_dark_frame(glyphs):
    sample = glyphs.images[:: max(1, len(glyphs.images) // 2000)].astype(np.float32)
    assert (sample.max(axis=(1, 2)) > 128).all()  # every instance shows its glyph
    border = np.concatenate([sample[:, 0], sample[:, -1], sample[:, :, 0], sample[:, :, -1]], axis=1)
    assert border.mean() < sample.mean() / 4  # glyphs are centred, the frame stays mostly black


def test_build_is_deterministic_for_a_seed_and_changes_with_it():
    a, b, c = build_glyphs(seed=0, **SMALL), build_glyphs(seed=0, **SMALL), build_glyphs(seed=1, **SMALL)
    assert a.chars == b.chars and np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert a.chars == c.chars  # the characters do not depend on the seed, the distortions do
    assert not np.array_equal(a.images, c.images)
    assert a.num_alphabets == 4 and a.num_chars == 32


def test_a_larger_image_size_renders_the_same_characters():
    small, large = build_glyphs(**SMALL), build_glyphs(image_size=84, **SMALL)
    assert large.images.shape[1:] == (84, 84) and large.chars == small.chars


def test_tofu_and_empty_renders_are_rejected():
    fonts, coverage = scan_fonts(find_font_files())
    renderer = GlyphRenderer(fonts, 28)
    latin = next(i for i, f in enumerate(fonts) if f.path.endswith("DejaVuSans.ttf"))
    assert renderer.render("A", latin) is not None
    assert renderer.render(NOTDEF_PROBE, latin) is None  # the .notdef box
    assert renderer.render(" ", latin) is None  # no ink
    renders, kept, n_families = render_character(renderer, "A", coverage[ord("A")], max_fonts=6)
    assert len(renders) == len(kept) == 6 and n_families >= 4
    assert len({r.tobytes() for r in renders}) == 6  # distinct renders only


def test_split_needs_three_alphabets():
    assert (
        sorted(split_alphabets(list("abcdefghij"), (0.6, 0.2, 0.2), seed=0))
        == ["test"] * 2 + ["train"] * 6 + ["val"] * 2
    )
    with pytest.raises(ValueError, match=">= 3"):
        split_alphabets(["a", "b"], (0.6, 0.2, 0.2), 0)
    with pytest.raises(ValueError, match="summing to 1"):
        split_alphabets(list("abc"), (0.5, 0.5, 0.5), 0)


def test_unknown_alphabet_names_list_the_known_ones():
    with pytest.raises(ValueError, match="known qualifying blocks"):
        build_glyphs(alphabets=["Klingon"], progress=False, use_cache=False)


def test_datamodule_serves_the_chosen_characters_with_disjoint_instances(glyphs):
    dm = GlyphDataModule(n_classes=10, batch_size=16, seed=3)
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    sizes = {s: len(dm.dataset(s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 120, "val": 40, "test": 40}
    for split in ("train", "val", "test"):
        assert torch.equal(torch.bincount(dm.dataset(split).labels), torch.full((10,), sizes[split] // 10))
    train_rows = {r.numpy().tobytes() for r in dm.dataset("train").images}
    assert not train_rows & {r.numpy().tobytes() for r in dm.dataset("test").images}
    train_chars = set(glyphs.split_chars("train").tolist())
    assert {glyphs.chars.index(c) for c in dm.chars} <= train_chars
    other = GlyphDataModule(n_classes=10, seed=4)
    other.setup()
    assert other.chars != dm.chars


def test_datamodule_refuses_impossible_sizes():
    with pytest.raises(ValueError, match="raise instances_per_char"):
        GlyphDataModule(n_train_per_class=18, n_val_per_class=2, n_test_per_class=2)
    with pytest.raises(ValueError, match="alphabet_split='all'"):
        GlyphDataModule(n_classes=100_000).setup()
