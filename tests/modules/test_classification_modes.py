"""Layer groups and fine-tuning modes: every parameter belongs to one group; each mode picks its groups."""

import pytest
import timm

from modules.finetune_modes import (
    FINETUNE_MODES,
    FinetuneConfigError,
    conv4_groups,
    select_trainable,
    timm_groups,
)
from modules.nets.conv4 import Conv4


def assert_partition(net, groups):
    names = [n for n, _ in net.named_parameters()]
    grouped = [p for g in groups.names for p in groups.params[g]]
    assert sorted(grouped) == sorted(names)  # each parameter in exactly one group
    assert groups.names[-1] == groups.head


def test_conv4_groups_are_its_four_blocks_and_the_head():
    net = Conv4(5, hidden=8)
    groups = conv4_groups(net)
    assert groups.names == ("block1", "block2", "block3", "block4", "head")
    assert groups.params["block2"] == ("block2.0.weight", "block2.0.bias", "block2.1.weight", "block2.1.bias")
    assert_partition(net, groups)


@pytest.mark.parametrize("name, expected", [
    ("resnet18", ("act1", "layer1", "layer2", "layer3", "layer4", "fc")),
    ("tf_efficientnet_lite0", ("blocks.0", "blocks.1", "blocks.2", "blocks.4", "blocks.6", "bn2", "classifier")),
])
def test_timm_groups_follow_feature_info_in_forward_order(name, expected):
    net = timm.create_model(name, pretrained=False, num_classes=5)
    groups = timm_groups(net)
    assert groups.names == expected
    assert_partition(net, groups)
    assert groups.group_of("conv1.weight" if name == "resnet18" else "conv_stem.weight") == expected[0]


def test_modes_pick_their_groups_in_network_order():
    groups = conv4_groups(Conv4(5, hidden=8))
    assert select_trainable("full", groups) == list(groups.names)
    assert select_trainable("head", groups) == ["head"]
    assert select_trainable("body", groups) == ["block1", "block2", "block3", "block4"]
    assert select_trainable("lower", groups) == ["block1", "block2", "head"]  # default: lower half of the body
    assert select_trainable("lower", groups, lower_layers=1) == ["block1", "head"]
    assert select_trainable("groups", groups, trainable=["head", "block1"]) == ["block1", "head"]
    assert set(FINETUNE_MODES) == {"full", "head", "lower", "body", "groups"}


def test_groups_mode_without_a_list_says_what_to_pass():
    with pytest.raises(FinetuneConfigError, match="trainable=.*block1"):
        select_trainable("groups", conv4_groups(Conv4(5, hidden=8)))
