"""Name -> DataModule class, so configs and the runner can ask for data by a short name."""

from __future__ import annotations

import difflib
import inspect

import lightning as L

from datamodules.digits import DigitsDataModule
from datamodules.fashion_mnist import FashionMNISTDataModule
from datamodules.fullscale import CIFAR10DataModule, OxfordPetDataModule, SVHNDataModule
from datamodules.glyphs import GlyphDataModule
from datamodules.scenes import SceneDataModule
from datamodules.tasks import FewShotDataModule

DATAMODULES: dict[str, type[L.LightningDataModule]] = {
    "fashion_mnist": FashionMNISTDataModule,
    "glyphs": GlyphDataModule,
    "few_shot": FewShotDataModule,
    "scenes": SceneDataModule,
    "digits": DigitsDataModule,
    "cifar10": CIFAR10DataModule,
    "svhn": SVHNDataModule,
    "oxford_pet": OxfordPetDataModule,
}


class UnknownDataModuleError(KeyError):
    """An unknown DataModule name; the message suggests the closest known names."""

    def __str__(self) -> str:  # KeyError would otherwise show the message in quotes
        return str(self.args[0])


def get_datamodule(name: str, **kwargs) -> L.LightningDataModule:
    """Instantiate the DataModule registered as ``name`` with ``kwargs``."""
    if name not in DATAMODULES:
        close = difflib.get_close_matches(name, DATAMODULES, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownDataModuleError(f"unknown datamodule {name!r}.{hint} Known: {sorted(DATAMODULES)}")
    cls = DATAMODULES[name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        suggestions = {k: difflib.get_close_matches(k, accepted, n=1) for k in unknown}
        hints = ", ".join(f"{k!r}" + (f" (did you mean {s[0]!r}?)" if s else "") for k, s in suggestions.items())
        raise TypeError(f"{cls.__name__} ({name!r}) does not accept {hints}; it accepts {sorted(accepted)}")
    return cls(**kwargs)
