"""Which layers are watched: names, globs, the module's own choice, and helpful errors."""

import pytest
from torch import nn

from analysis.errors import ConfigError
from analysis.layers import parameter_groups, resolve_layers
from tests.analysis.tiny_models import TinyNet


def test_names_and_globs_expand_in_order_without_duplicates():
    model = TinyNet()
    assert resolve_layers(model, ["net.head", "net.block?", "net.block1"]) == [
        "net.head", "net.block1", "net.block2", "net.block3", "net.block4"]
    assert resolve_layers(model, "net.block1.*") == ["net.block1.0", "net.block1.1", "net.block1.2", "net.block1.3"]


def test_the_module_names_its_layers_by_method_or_attribute():
    assert resolve_layers(TinyNet()) == TinyNet().default_watch_layers()
    plain = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    plain.watch_layers = ["0"]
    assert resolve_layers(plain) == ["0"]


def test_unknown_layers_get_a_suggestion_and_a_fix():
    with pytest.raises(ConfigError, match='Did you mean "net.block2"'):
        resolve_layers(TinyNet(), ["net.blok2"])
    with pytest.raises(ConfigError, match="matches no submodule"):
        resolve_layers(TinyNet(), ["decoder.*"])
    with pytest.raises(ConfigError, match="define default_watch_layers"):
        resolve_layers(nn.Sequential(nn.Linear(2, 2)))


def test_parameter_groups_collect_each_module_parameters():
    groups = parameter_groups(TinyNet(), ["net.block1", "net.head"])
    assert groups == {"net.block1": ["net.block1.0.weight", "net.block1.0.bias", "net.block1.1.weight",
                                     "net.block1.1.bias"],
                      "net.head": ["net.head.weight", "net.head.bias"]}
