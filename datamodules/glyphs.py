"""An Omniglot-like glyph set rendered from the installed fonts (Debian noto, unifont, freefont, DejaVu).

Classes are letters (Unicode categories Lu/Ll/Lt/Lo) grouped into alphabets by Unicode block; the
instances of a character are renders from different fonts that really contain it, each with a small
random affine + elastic distortion. A font "contains" a character when its cmap maps it (fontTools)
AND its render has ink and differs from the font's own .notdef (tofu) render. Fonts of one typeface
family (Regular/Bold/Italic files) count once towards ``min_fonts``, and a render identical to one
already kept (e.g. Unifont and Unifont-JP) is dropped, so ``min_fonts`` counts real designs.

Like Omniglot, the split into train/val/test is by alphabet (disjoint scripts). The rendered set is
cached as .npz under ``cache_dir("glyphs", <config hash>)``; a warm build is a single ``np.load``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import unicodedata
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch.utils.data import Dataset

from analysis.files import atomic_write
from datamodules.fashion_mnist import (
    ArrayDataModule,
    ImageArrayDataset,
    InputTransform,
    LabelTransform,
    pixel_stats,
)
from datamodules.paths import cache_dir, read_cache

GLYPHS_VERSION = 3  # bump when rendering changes, so old caches are not reused
DEFAULT_FONT_DIRS = ("/usr/share/fonts",)
LETTER_CATEGORIES = frozenset({"Lu", "Ll", "Lt", "Lo"})
# Blocks that hold styled or contextual variants of other letters, or ideographs, not an alphabet.
EXCLUDED_BLOCK_WORDS = (
    "Mathematical",
    "Presentation Forms",
    "Letterlike",
    "Number Forms",
    "CJK",
    "Halfwidth",
)
# GNU Unifont is one design shipped as several files (JP, CSUR, Upper, Sample): count it once.
FAMILY_ALIASES = ((re.compile(r"^Unifont\b.*", re.IGNORECASE), "Unifont"),)
NOTDEF_PROBE = chr(0x10FFFD)  # a private-use code point no font maps: renders the font's .notdef box
GLYPH_SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------------------------- data
@dataclass
class GlyphSet:
    """A rendered glyph set: images, their character labels, and the alphabet structure.

    ``labels[i]`` is the character id of image i (0..num_chars-1); ``char_alphabet[c]`` the alphabet id
    of character c; ``alphabet_split[a]`` in {"train", "val", "test"} (disjoint alphabets).
    """

    images: np.ndarray  # uint8 [N, H, W], ink bright on black
    labels: np.ndarray  # int64 [N]
    font_ids: np.ndarray  # int64 [N] index into font_names
    chars: list[str]
    char_alphabet: np.ndarray  # int64 [C]
    alphabet_names: list[str]
    alphabet_split: list[str]
    font_names: list[str]
    config: dict = field(default_factory=dict)

    @property
    def num_chars(self) -> int:
        return len(self.chars)

    @property
    def num_alphabets(self) -> int:
        return len(self.alphabet_names)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def alphabet_ids(self) -> np.ndarray:
        """Alphabet id of every image."""
        return self.char_alphabet[self.labels]

    def split_chars(self, split: str) -> np.ndarray:
        """Ids of the characters whose alphabet belongs to ``split`` ("train", "val", "test" or "all")."""
        if split == "all":
            return np.arange(self.num_chars)
        if split not in GLYPH_SPLITS:
            raise ValueError(f"unknown glyph split {split!r}; use one of {list(GLYPH_SPLITS) + ['all']}")
        alphabets = [a for a, s in enumerate(self.alphabet_split) if s == split]
        return np.flatnonzero(np.isin(self.char_alphabet, alphabets))

    def split_indices(self, split: str) -> np.ndarray:
        """Indices of the images whose character belongs to ``split``."""
        return np.flatnonzero(np.isin(self.labels, self.split_chars(split)))

    def save(self, path: Path) -> None:
        atomic_write(path, lambda tmp: np.savez(
            tmp,
            images=self.images,
            labels=self.labels,
            font_ids=self.font_ids,
            codepoints=np.array([ord(c) for c in self.chars], dtype=np.int64),
            char_alphabet=self.char_alphabet,
            alphabet_names=np.array(self.alphabet_names, dtype=np.str_),
            alphabet_split=np.array(self.alphabet_split, dtype=np.str_),
            font_names=np.array(self.font_names, dtype=np.str_),
            config=np.array(json.dumps(self.config)),
        ))

    @classmethod
    def load(cls, path: Path) -> GlyphSet:
        with np.load(path, allow_pickle=False) as data:
            return cls(
                images=data["images"],
                labels=data["labels"],
                font_ids=data["font_ids"],
                chars=[chr(int(c)) for c in data["codepoints"]],
                char_alphabet=data["char_alphabet"],
                alphabet_names=[str(s) for s in data["alphabet_names"]],
                alphabet_split=[str(s) for s in data["alphabet_split"]],
                font_names=[str(s) for s in data["font_names"]],
                config=json.loads(str(data["config"])),
            )


@dataclass(frozen=True)
class FontFile:
    path: str
    family: str


# --------------------------------------------------------------------------------------------- fonts
def find_font_files(font_dirs: Sequence[str | os.PathLike] | None = None) -> list[Path]:
    """All .ttf/.otf files under ``font_dirs`` (default /usr/share/fonts), sorted."""
    dirs = [Path(d) for d in (font_dirs or DEFAULT_FONT_DIRS)]
    files = sorted({p for d in dirs if d.is_dir() for p in d.rglob("*") if p.suffix.lower() in (".ttf", ".otf")})
    if not files:
        raise FileNotFoundError(
            f"no .ttf/.otf fonts under {[str(d) for d in dirs]}; install them with `sudo apt-get install "
            "fonts-noto-core fonts-unifont fonts-freefont-ttf fonts-dejavu-core` or pass font_dirs="
        )
    return files


def files_fingerprint(files: Sequence[Path]) -> list:
    """Paths, sizes and mtimes: changes whenever an installed font changes."""
    return [(str(p), p.stat().st_size, int(p.stat().st_mtime)) for p in files]


def config_key(payload: object) -> str:
    """A short stable hash of a JSON-able configuration (names cache folders)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


_SCANS: dict[str, tuple[list[FontFile], dict[int, list[int]]]] = {}


def _read_font_scan(path: Path) -> tuple[list[FontFile], np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        fonts = [FontFile(str(p), str(f)) for p, f in zip(data["paths"], data["families"])]
        return fonts, data["codepoints"], data["font_index"]


def scan_fonts(files: Sequence[Path]) -> tuple[list[FontFile], dict[int, list[int]]]:
    """Each font's family and cmap: the fonts, and code point -> indices of the fonts mapping it.

    The scan (about 2 s for the Debian fonts) is cached (.npz keyed by the files' paths, sizes and
    mtimes) and kept in memory for the process.
    """
    key = config_key([GLYPHS_VERSION, files_fingerprint(files)])
    if key in _SCANS:
        return _SCANS[key]
    path = cache_dir("glyphs", "fontscan") / f"{key}.npz"
    scan = read_cache(path, _read_font_scan)
    if scan is not None:
        fonts, codepoints, font_index = scan
        order = np.argsort(codepoints, kind="stable")
        codepoints, font_index = codepoints[order], font_index[order]
        starts = np.flatnonzero(np.r_[True, codepoints[1:] != codepoints[:-1]])
        groups = np.split(font_index, starts[1:])
        coverage = {int(c): g.tolist() for c, g in zip(codepoints[starts], groups)}
    else:
        fonts, coverage = _scan_font_files(files)
        pairs = [(c, i) for c, ids in coverage.items() for i in ids]
        atomic_write(path, lambda tmp: np.savez(
            tmp,
            paths=np.array([f.path for f in fonts], dtype=np.str_),
            families=np.array([f.family for f in fonts], dtype=np.str_),
            codepoints=np.array([c for c, _ in pairs], dtype=np.int64),
            font_index=np.array([i for _, i in pairs], dtype=np.int64),
        ))
    _SCANS[key] = (fonts, coverage)
    return fonts, coverage


def _scan_font_files(files: Sequence[Path]) -> tuple[list[FontFile], dict[int, list[int]]]:
    from fontTools.ttLib import TTFont  # fontTools ships with matplotlib, a pinned dependency

    fonts: list[FontFile] = []
    coverage: dict[int, list[int]] = defaultdict(list)
    for path in files:
        try:
            with TTFont(path, lazy=True, fontNumber=0) as ttf:
                names = ttf["name"]
                family = canonical_family(names.getDebugName(16) or names.getDebugName(1) or path.stem)
                cmap = ttf.getBestCmap() or {}
        except Exception:  # noqa: BLE001 - an unreadable font is simply not used
            continue
        index = len(fonts)
        fonts.append(FontFile(str(path), family))
        for codepoint in cmap:
            coverage[codepoint].append(index)
    return fonts, dict(coverage)


def canonical_family(name: str) -> str:
    for pattern, alias in FAMILY_ALIASES:
        if pattern.match(name):
            return alias
    return name


def unicode_block(char: str) -> str:
    from fontTools import unicodedata as font_unicodedata

    return font_unicodedata.block(char)


def candidate_alphabets(
    fonts: Sequence[FontFile], coverage: dict[int, list[int]], min_fonts: int, alphabets: Sequence[str] | None
) -> dict[str, list[int]]:
    """Letters mapped by >= ``min_fonts`` families, grouped by Unicode block, in a fixed spread order."""
    groups: dict[str, list[int]] = defaultdict(list)
    wanted = set(alphabets) if alphabets is not None else None
    family_ids = {name: k for k, name in enumerate(sorted({f.family for f in fonts}))}
    font_family = [family_ids[f.family] for f in fonts]
    for codepoint, font_ids in coverage.items():
        if len(font_ids) < min_fonts:
            continue
        char = chr(codepoint)
        if unicodedata.category(char) not in LETTER_CATEGORIES:
            continue
        if len({font_family[i] for i in font_ids}) < min_fonts:
            continue
        block = unicode_block(char)
        if any(word in block for word in EXCLUDED_BLOCK_WORDS) or (wanted is not None and block not in wanted):
            continue
        groups[block].append(codepoint)
    # crc32 order spreads a capped selection over the whole block, independently of any seed
    return {b: sorted(cps, key=lambda c: (zlib.crc32(chr(c).encode()), c)) for b, cps in sorted(groups.items())}


class GlyphRenderer:
    """Renders one character of one font, centred and scaled to fit an ``image_size`` square (uint8)."""

    def __init__(self, fonts: Sequence[FontFile], image_size: int) -> None:
        self.fonts = fonts
        self.image_size = image_size
        self.margin = max(1, round(image_size / 14))
        self.point_size = 2 * image_size  # render at about twice the final size, then area-downsample
        self._faces: dict[int, ImageFont.FreeTypeFont | None] = {}
        self._notdef: dict[int, Image.Image] = {}

    def face(self, font_id: int) -> ImageFont.FreeTypeFont | None:
        if font_id not in self._faces:
            try:
                face = ImageFont.truetype(
                    self.fonts[font_id].path, self.point_size, layout_engine=ImageFont.Layout.BASIC
                )
                self._faces[font_id] = face
                self._notdef[font_id] = self.draw(NOTDEF_PROBE, face)
            except OSError:  # e.g. bitmap-only fonts that have no scalable outlines
                self._faces[font_id] = None
        return self._faces[font_id]

    @staticmethod
    def draw(char: str, face: ImageFont.FreeTypeFont) -> Image.Image:
        """The character drawn white on black on a canvas exactly its bounding box."""
        left, top, right, bottom = face.getbbox(char)
        canvas = Image.new("L", (max(1, right - left), max(1, bottom - top)))
        ImageDraw.Draw(canvas).text((-left, -top), char, font=face, fill=255)
        return canvas

    def render(self, char: str, font_id: int) -> np.ndarray | None:
        """The glyph as uint8 [S, S], or None if the font draws nothing or its .notdef box."""
        face = self.face(font_id)
        if face is None:
            return None
        glyph = self.draw(char, face)
        notdef = self._notdef[font_id]
        if glyph.size == notdef.size and glyph.tobytes() == notdef.tobytes():
            return None
        bbox = glyph.getbbox()
        if bbox is None or max(bbox[2] - bbox[0], bbox[3] - bbox[1]) < self.point_size // 8:
            return None
        width, height = bbox[2] - bbox[0], bbox[3] - bbox[1]
        scale = (self.image_size - 2 * self.margin) / max(width, height)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        small = np.asarray(glyph.resize((new_w, new_h), Image.Resampling.BOX, box=bbox))
        out = np.zeros((self.image_size, self.image_size), dtype=np.uint8)
        top, left = (self.image_size - new_h) // 2, (self.image_size - new_w) // 2
        out[top : top + new_h, left : left + new_w] = small
        return out


def render_character(
    renderer: GlyphRenderer, char: str, font_ids: Sequence[int], max_fonts: int, min_families: int = 1
) -> tuple[list[np.ndarray], list[int], int]:
    """Distinct renders of ``char``, visiting families round-robin; returns renders, font ids, #families.

    Stops early once fewer than ``min_families`` families could still be reached (a rejected character).
    """
    by_family: dict[str, list[int]] = defaultdict(list)
    for font_id in sorted(font_ids, key=lambda i: renderer.fonts[i].path):
        by_family[renderer.fonts[font_id].family].append(font_id)
    order = [ids[k] for k in range(max(map(len, by_family.values()))) for ids in by_family.values() if k < len(ids)]
    renders, kept, seen, families = [], [], set(), set()
    for position, font_id in enumerate(order):
        if len(kept) >= max_fonts:
            break
        image = renderer.render(char, font_id)
        if image is None or (key := image.tobytes()) in seen:
            reachable = families | {renderer.fonts[f].family for f in order[position + 1 :]}
            if len(reachable) < min_families:
                break
            continue
        seen.add(key)
        renders.append(image)
        kept.append(font_id)
        families.add(renderer.fonts[font_id].family)
    return renders, kept, len(families)


# --------------------------------------------------------------------------------------------- distortion
def distort(
    base: np.ndarray, source: np.ndarray, rng: np.random.Generator, strength: float = 1.0, chunk: int = 4096
) -> np.ndarray:
    """Random small affine + elastic warps of ``base[source[i]]`` for each i (uint8 [N, S, S]).

    Affine: rotation +-10 deg, scale 0.9-1.12, anisotropy +-6 %, shear +-0.12, shift +-6 % of the side;
    elastic: a smooth displacement field (4x4 control grid, bicubic) of about 1/30 of the side.
    ``strength`` scales all of them (0 gives the clean renders).
    """
    n, size = len(source), base.shape[-1]
    rotation = np.deg2rad(rng.uniform(-10, 10, n)) * strength
    scale = 1.0 + (rng.uniform(0.9, 1.12, n) - 1.0) * strength
    aniso = rng.uniform(-0.06, 0.06, n) * strength
    shear = rng.uniform(-0.12, 0.12, n) * strength
    shift = rng.uniform(-0.06, 0.06, (n, 2)) * 2 * strength
    coarse = rng.normal(0.0, 1.0 / 15, (n, 2, 4, 4)) * strength
    cos, sin = np.cos(rotation), np.sin(rotation)
    rot = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    shr = np.stack([np.stack([np.ones(n), shear], -1), np.stack([np.zeros(n), np.ones(n)], -1)], -2)
    stretch = np.stack(
        [np.stack([scale * (1 + aniso), np.zeros(n)], -1), np.stack([np.zeros(n), scale * (1 - aniso)], -1)],
        -2,
    )
    theta = np.concatenate([rot @ shr @ stretch, shift[:, :, None]], axis=2)
    base_t = torch.from_numpy(base).float()
    # sampling grid = affine map of the pixel centres + a bicubic upsampling of the 4x4 control field,
    # both written as small matrix products (much cheaper than affine_grid + interpolate per chunk)
    centres = (torch.arange(size, dtype=torch.float32) * 2 + 1) / size - 1
    ys, xs = torch.meshgrid(centres, centres, indexing="ij")
    pixels = torch.stack([xs, ys, torch.ones_like(xs)], -1).view(1, -1, 3)
    basis = F.interpolate(torch.eye(16).view(16, 1, 4, 4), size=(size, size), mode="bicubic", align_corners=True)
    basis = basis.view(16, -1)
    out = np.empty((n, size, size), dtype=np.uint8)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        m = stop - start
        affine = pixels @ torch.from_numpy(theta[start:stop]).float().transpose(1, 2)
        field = torch.from_numpy(coarse[start:stop]).float().view(m * 2, 16) @ basis
        grid = (affine + field.view(m, 2, -1).transpose(1, 2)).view(m, size, size, 2)
        images = base_t[torch.from_numpy(source[start:stop])].unsqueeze(1)
        warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out[start:stop] = warped.squeeze(1).round().clamp_(0, 255).to(torch.uint8).numpy()
    return out


# --------------------------------------------------------------------------------------------- build
def split_alphabets(names: Sequence[str], fractions: Sequence[float], seed: int) -> list[str]:
    """Assign whole alphabets to train/val/test with a seeded shuffle (each split gets >= 1 alphabet)."""
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split_fractions={tuple(fractions)} must be three positive numbers summing to 1")
    n = len(names)
    if n < 3:
        raise ValueError(
            f"only {n} alphabets qualify ({list(names)}); a train/val/test split needs >= 3: "
            "lower min_fonts or min_chars_per_alphabet, or allow more alphabets"
        )
    n_val = max(1, round(fractions[1] * n))
    n_test = max(1, round(fractions[2] * n))
    n_train = n - n_val - n_test
    order = np.random.default_rng(seed).permutation(n)
    split = [""] * n
    for rank, a in enumerate(order):
        split[a] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return split


_MEMO: dict[str, GlyphSet] = {}


def build_glyphs(
    image_size: int = 28,
    min_fonts: int = 4,
    instances_per_char: int = 20,
    seed: int = 0,
    max_chars_per_alphabet: int = 55,
    min_chars_per_alphabet: int = 10,
    max_fonts_per_char: int = 8,
    split_fractions: Sequence[float] = (0.6, 0.15, 0.25),
    split_seed: int = 0,
    distortion: float = 1.0,
    alphabets: Sequence[str] | None = None,
    font_dirs: Sequence[str] | None = None,
    progress: bool = True,
    use_cache: bool = True,
) -> GlyphSet:
    """Render (or load from cache) the glyph set; deterministic for a given configuration and seed.

    ``seed`` drives the distortions; ``split_seed`` the alphabet split; the choice of characters
    (at most ``max_chars_per_alphabet`` per Unicode block, like Omniglot's 14-55) is seed-independent.
    ``alphabets`` restricts to some Unicode block names (e.g. ["Armenian", "Cyrillic"]).
    ``use_cache=False`` renders afresh and stores nothing (the font scan is still cached).
    """
    if image_size < 8:
        raise ValueError(f"image_size={image_size} is too small to draw glyphs; use >= 8 (28 or 84 are usual)")
    if not 1 <= min_chars_per_alphabet <= max_chars_per_alphabet:
        raise ValueError(
            f"min_chars_per_alphabet={min_chars_per_alphabet} must lie in 1..max_chars_per_alphabet="
            f"{max_chars_per_alphabet}; lower it or raise max_chars_per_alphabet"
        )
    if min_fonts < 1 or instances_per_char < 1:
        raise ValueError(f"min_fonts={min_fonts} and instances_per_char={instances_per_char} must be >= 1")
    files = find_font_files(font_dirs)
    config = {
        "version": GLYPHS_VERSION,
        "image_size": image_size,
        "min_fonts": min_fonts,
        "instances_per_char": instances_per_char,
        "seed": seed,
        "max_chars_per_alphabet": max_chars_per_alphabet,
        "min_chars_per_alphabet": min_chars_per_alphabet,
        "max_fonts_per_char": max_fonts_per_char,
        "split_fractions": [float(f) for f in split_fractions],
        "split_seed": split_seed,
        "distortion": distortion,
        "alphabets": sorted(alphabets) if alphabets is not None else None,
    }
    renderer_versions = [PIL.__version__, getattr(ImageFont.core, "freetype2_version", "?")]
    key = config_key([config, files_fingerprint(files), renderer_versions])
    if use_cache and key in _MEMO:
        return _MEMO[key]
    path = cache_dir("glyphs", key) / "glyphs.npz" if use_cache else None
    cached = read_cache(path, GlyphSet.load)
    if cached is not None:
        _MEMO[key] = cached
        return cached

    fonts, coverage = scan_fonts(files)
    candidates = candidate_alphabets(fonts, coverage, min_fonts, alphabets)
    if alphabets is not None and (unknown := sorted(set(alphabets) - set(candidates))):
        raise ValueError(
            f"alphabets {unknown} have no letters in >= {min_fonts} font families here; "
            f"known qualifying blocks: {sorted(candidates)}"
        )
    renderer = GlyphRenderer(fonts, image_size)
    bases: list[np.ndarray] = []
    base_font: list[int] = []
    char_bases: list[tuple[int, int]] = []  # (first base index, number of bases) per character
    chars: list[str] = []
    char_alphabet: list[int] = []
    alphabet_names: list[str] = []
    from tqdm import tqdm

    bar = tqdm(
        total=len(candidates),
        desc="rendering glyph alphabets",
        unit="alphabet",
        delay=3,
        mininterval=2.0,
        file=sys.stderr,
        leave=False,
        disable=not progress,
    )
    for block, codepoints in candidates.items():
        accepted = []
        for codepoint in codepoints:
            if len(accepted) >= max_chars_per_alphabet:
                break
            renders, kept, n_families = render_character(
                renderer, chr(codepoint), coverage[codepoint], max_fonts_per_char, min_fonts
            )
            if n_families >= min_fonts:
                accepted.append((chr(codepoint), renders, kept))
        bar.update()
        if len(accepted) < min_chars_per_alphabet:
            continue
        alphabet_id = len(alphabet_names)
        alphabet_names.append(block)
        for char, renders, kept in sorted(accepted, key=lambda item: ord(item[0])):
            char_bases.append((len(bases), len(renders)))
            bases.extend(renders)
            base_font.extend(kept)
            chars.append(char)
            char_alphabet.append(alphabet_id)
    bar.close()

    if not alphabet_names:
        raise ValueError(
            f"no alphabet has >= {min_chars_per_alphabet} letters drawn by >= {min_fonts} font families; "
            "lower min_fonts or min_chars_per_alphabet, or install more fonts"
        )
    rng = np.random.default_rng(seed)
    instance = np.arange(instances_per_char)
    source = np.concatenate([first + instance % count for first, count in char_bases])
    labels = np.repeat(np.arange(len(chars), dtype=np.int64), instances_per_char)
    images = distort(np.stack(bases), source, rng, strength=distortion)
    used_fonts = sorted(set(base_font))
    font_index = {f: i for i, f in enumerate(used_fonts)}
    glyphs = GlyphSet(
        images=images,
        labels=labels,
        font_ids=np.array([font_index[base_font[s]] for s in source], dtype=np.int64),
        chars=chars,
        char_alphabet=np.array(char_alphabet, dtype=np.int64),
        alphabet_names=alphabet_names,
        alphabet_split=split_alphabets(alphabet_names, split_fractions, split_seed),
        font_names=[Path(fonts[f].path).name for f in used_fonts],
        config=config,
    )
    if path is not None:
        glyphs.save(path)
        _MEMO[key] = glyphs
    return glyphs


# --------------------------------------------------------------------------------------------- datamodule
class GlyphDataModule(ArrayDataModule):
    """Conventional classification on ``n_classes`` glyph characters (1 x S x S images).

    Characters are drawn (by ``seed``) from the alphabets of ``alphabet_split``; each character's
    instances are split into ``n_train/n_val/n_test_per_class`` images. The glyph set itself is built
    with ``glyph_seed`` and cached, so changing ``seed`` does not re-render anything.
    """

    def __init__(
        self,
        seed: int = 0,
        batch_size: int = 64,
        n_classes: int = 40,
        alphabet_split: str = "train",
        n_train_per_class: int = 12,
        n_val_per_class: int = 4,
        n_test_per_class: int = 4,
        image_size: int = 28,
        min_fonts: int = 4,
        instances_per_char: int = 20,
        glyph_seed: int = 0,
        normalize: bool = True,
        input_transform: InputTransform | None = None,
        label_transform: LabelTransform | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__(seed, batch_size, num_workers, input_transform, label_transform)
        self.save_hyperparameters()
        per_class = n_train_per_class + n_val_per_class + n_test_per_class
        if min(n_train_per_class, n_val_per_class, n_test_per_class) < 1 or per_class > instances_per_char:
            raise ValueError(
                f"n_train/n_val/n_test_per_class = {n_train_per_class}/{n_val_per_class}/{n_test_per_class} "
                f"must each be >= 1 and sum to <= instances_per_char={instances_per_char}; "
                "raise instances_per_char"
            )
        self.n_classes = n_classes
        self.alphabet_split = alphabet_split
        self.per_class = (n_train_per_class, n_val_per_class, n_test_per_class)
        self.glyph_kwargs = dict(
            image_size=image_size, min_fonts=min_fonts, instances_per_char=instances_per_char, seed=glyph_seed
        )
        self.normalize = normalize
        self.num_classes = n_classes
        self.image_shape = (1, image_size, image_size)
        self.chars: list[str] = []

    def build_datasets(self) -> dict[str, Dataset]:
        glyphs = build_glyphs(**self.glyph_kwargs)
        pool = glyphs.split_chars(self.alphabet_split)
        if self.n_classes < 2 or self.n_classes > len(pool):
            raise ValueError(
                f"n_classes={self.n_classes} must lie in 2..{len(pool)} (characters in the "
                f"{self.alphabet_split!r} alphabets); lower it or use alphabet_split='all'"
            )
        rng = np.random.default_rng(self.seed)
        chosen = np.sort(rng.choice(pool, size=self.n_classes, replace=False))
        self.chars = [glyphs.chars[c] for c in chosen]
        bounds = np.cumsum((0,) + self.per_class)
        parts: dict[str, list[np.ndarray]] = {s: [] for s in ("train", "val", "test")}
        for char_id in chosen:
            members = rng.permutation(np.flatnonzero(glyphs.labels == char_id))
            for k, split in enumerate(("train", "val", "test")):
                parts[split].append(np.sort(members[bounds[k] : bounds[k + 1]]))
        mean, std = pixel_stats(glyphs.images) if self.normalize else (0.0, 1.0)
        remap = {int(c): k for k, c in enumerate(chosen)}
        datasets = {}
        for split, chunks in parts.items():
            index = np.concatenate(chunks)
            labels = np.array([remap[int(c)] for c in glyphs.labels[index]], dtype=np.int64)
            datasets[split] = ImageArrayDataset(
                glyphs.images[index], self.transform_labels(labels, split), mean, std, self.input_transform
            )
        return datasets
