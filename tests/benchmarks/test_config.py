"""Profiles and overrides: every value overridable, typos rejected with a suggestion."""

import pytest

from benchmarks.config import apply_overrides, flatten, load_profile, load_yaml
from benchmarks.errors import UserError

CFG = {"train": {"lr": 0.1, "epochs": 3}, "seeds": [0, 1, 2], "encoder": "resnet18"}


def test_override_parses_yaml_values():
    out = apply_overrides(CFG, ["train.lr=0.01", "seeds=[4, 5]", "encoder=conv4"])
    assert out["train"]["lr"] == 0.01 and isinstance(out["train"]["lr"], float)
    assert out["seeds"] == [4, 5]
    assert out["encoder"] == "conv4"
    assert CFG["train"]["lr"] == 0.1  # the input is not mutated


def test_unknown_key_suggests_the_closest():
    with pytest.raises(UserError, match=r'unknown config key "train.lrr".*Did you mean "train.lr"'):
        apply_overrides(CFG, ["train.lrr=1"])


def test_override_without_equals_is_explained():
    with pytest.raises(UserError, match="key.path=value"):
        apply_overrides(CFG, ["train.lr"])


def test_flatten_uses_dotted_keys():
    assert flatten(CFG) == {"train.lr": 0.1, "train.epochs": 3, "seeds": [0, 1, 2], "encoder": "resnet18"}


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: 0.1\n epochs: 3\n")
    with pytest.raises(UserError, match=r"malformed config .*bad.yaml at line 3"):
        load_yaml(path)


def test_unknown_profile_lists_the_available_ones(tmp_path, monkeypatch):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "tiny.yaml").write_text("seeds: [0]\n")
    monkeypatch.setattr("benchmarks.config.CONFIG_DIR", tmp_path)
    assert load_profile("demo", "tiny") == {"seeds": [0]}
    with pytest.raises(UserError, match=r'no profile "tinny".*Did you mean "tiny"'):
        load_profile("demo", "tinny")
