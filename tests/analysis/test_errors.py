"""One definition of the configuration error and did-you-mean, shared by analysis/ and callbacks/."""

import pytest

from analysis.errors import ConfigError, check_choice, did_you_mean


def test_the_message_names_the_problem_and_the_fix():
    error = ConfigError("bad grid.", "pass 0 and 1")
    assert str(error) == "bad grid. Fix: pass 0 and 1"
    assert (error.problem, error.fix) == ("bad grid.", "pass 0 and 1")
    assert isinstance(error, ValueError)


def test_did_you_mean_suggests_only_a_close_name():
    assert did_you_mean("relativ", ["absolute", "relative"]) == ' Did you mean "relative"?'
    assert did_you_mean("zzz", ["absolute", "relative"]) == ""


def test_check_choice_returns_a_known_value_and_explains_an_unknown_one():
    assert check_choice("noise", "absolute", ("absolute", "relative")) == "absolute"
    with pytest.raises(ConfigError, match='unknown noise "relativ". Did you mean "relative"') as caught:
        check_choice("noise", "relativ", ("absolute", "relative"))
    assert caught.value.fix == "use one of: absolute, relative"


def test_the_callbacks_raise_the_same_class():
    from callbacks import CallbackConfigError
    from callbacks.errors import check_choice as callbacks_check_choice
    from callbacks.errors import did_you_mean as callbacks_did_you_mean

    assert CallbackConfigError is ConfigError
    assert callbacks_check_choice is check_choice and callbacks_did_you_mean is did_you_mean
