"""Profiles and overrides: every value overridable, typos rejected with a suggestion."""

import pytest

from benchmarks.core.config import apply_overrides, flatten, load_profile, load_yaml
from benchmarks.core.errors import UserError

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
    monkeypatch.setattr("benchmarks.core.config.CONFIG_DIR", tmp_path)
    assert load_profile("demo", "tiny") == {"seeds": [0]}
    with pytest.raises(UserError, match=r'no profile "tinny".*Did you mean "tiny"'):
        load_profile("demo", "tinny")


def test_a_set_that_a_more_specific_key_overrides_is_an_error_naming_both():
    from benchmarks.core.config import check_not_shadowed

    shadows = {"maml.inner_lr": ["experiments.omniglot.maml.inner_lr"]}
    with pytest.raises(UserError, match="experiments.omniglot.maml.inner_lr"):
        check_not_shadowed(["maml.inner_lr=0.1"], shadows)
    check_not_shadowed(["maml.inner_lr=0.1", "experiments.omniglot.maml.inner_lr=0.1"], shadows)
    check_not_shadowed(["maml.meta_lr=0.1"], shadows)


@pytest.mark.parametrize(("kind", "value", "message"), [
    ("int", 2.5, "is not a whole number"), ("int", "abc", "is not a whole number"), ("int", True, "whole number"),
    ("int", -3, ">= 1"), ("float", "x", "is not a number"), ("bool", "yes", "true or false"),
    ("choice", "adma", 'Did you mean "adam"'), ("list", 3, "is not a list"), ("list", [], "at least 1"),
])
def test_typed_checks_name_the_key_the_value_and_the_fix(kind, value, message):
    from benchmarks.core import config as c

    checks = {"int": lambda k, v: c.as_int(k, v, minimum=1), "float": c.as_float, "bool": c.as_bool,
              "choice": lambda k, v: c.as_choice(k, v, ["adam", "sgd"]),
              "list": lambda k, v: c.as_list(k, v, c.as_int)}
    with pytest.raises(UserError, match=message) as err:
        checks[kind]("train.x", value)
    assert "train.x=" in str(err.value) and "Fix:" in str(err.value)
    assert c.as_int("a", 3.0) == 3 and isinstance(c.as_int("a", 3.0), int)


def test_seeds_must_be_distinct_whole_numbers():
    from benchmarks.core.config import seeds

    assert seeds({"seeds": [0, 1]}) == [0, 1]
    for bad in ("abc", [], [0, 0], [0.5]):
        with pytest.raises(UserError):
            seeds({"seeds": bad})
