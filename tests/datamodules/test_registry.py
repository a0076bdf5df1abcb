"""The DataModule registry: names, instantiation, helpful errors."""

from __future__ import annotations

import lightning as L
import pytest

from datamodules.digits import DigitsDataModule
from datamodules.registry import DATAMODULES, UnknownDataModuleError, get_datamodule


def test_every_registered_name_is_a_lightning_datamodule():
    assert {"fashion_mnist", "glyphs", "few_shot", "scenes", "digits", "cifar10", "svhn", "oxford_pet"} <= set(
        DATAMODULES
    )
    assert all(issubclass(cls, L.LightningDataModule) for cls in DATAMODULES.values())


def test_get_datamodule_passes_keyword_arguments():
    dm = get_datamodule("digits", batch_size=7, seed=3)
    assert isinstance(dm, DigitsDataModule) and dm.batch_size == 7 and dm.seed == 3


def test_unknown_name_suggests_the_closest_and_lists_all():
    with pytest.raises(KeyError) as info:
        get_datamodule("fashion-mnist")
    assert isinstance(info.value, UnknownDataModuleError)
    message = str(info.value)
    assert "Did you mean 'fashion_mnist'" in message and "'scenes'" in message


def test_unknown_argument_suggests_the_closest_parameter():
    with pytest.raises(TypeError, match="did you mean 'batch_size'"):
        get_datamodule("digits", batchsize=8)
