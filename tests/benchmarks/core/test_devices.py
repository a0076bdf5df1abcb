"""Accelerator and device resolution: "auto" follows what torch sees, impossible requests are one-paragraph
errors that name the fix, and --devices reaches Lightning only in a form it reads as meant.

The GPU branches are exercised here without a GPU by making torch report CUDA devices (monkeypatch).
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.core.devices import describe, gpu_count, parse_devices, resolve_accelerator
from benchmarks.core.errors import UserError


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Fake GPU")


# -- resolve_accelerator ---------------------------------------------------------------------------------

def test_auto_is_the_cpu_without_cuda_and_a_gpu_with_it(no_cuda, monkeypatch):
    assert resolve_accelerator("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_accelerator("auto") == "gpu"


def test_auto_on_this_machine_is_what_torch_sees():
    assert resolve_accelerator("auto") == ("gpu" if torch.cuda.is_available() else "cpu")


def test_cpu_is_always_the_cpu(two_gpus):
    assert resolve_accelerator("cpu") == "cpu"
    assert resolve_accelerator(" CPU ") == "cpu"


@pytest.mark.parametrize("name", ["gpu", "cuda", "GPU"])
def test_gpu_and_cuda_are_lightnings_gpu_when_cuda_is_there(two_gpus, name):
    assert resolve_accelerator(name) == "gpu"


@pytest.mark.parametrize("name", ["gpu", "cuda"])
def test_a_gpu_without_cuda_is_an_error_that_says_why_and_what_to_pass(no_cuda, monkeypatch, name):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(UserError) as caught:
        resolve_accelerator(name)
    message = str(caught.value)
    assert f"--accelerator {name}" in message and "torch sees no CUDA device" in message
    assert "Fix: use --accelerator auto" in message and "--accelerator cpu" in message and "GPU node" in message


def test_the_error_names_an_empty_cuda_visible_devices(no_cuda, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(UserError, match='CUDA_VISIBLE_DEVICES="" hides every GPU'):
        resolve_accelerator("gpu")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    with pytest.raises(UserError, match='CUDA_VISIBLE_DEVICES="3"'):
        resolve_accelerator("gpu")


def test_the_error_names_a_torch_build_without_cuda(no_cuda, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(UserError, match="has no CUDA support"):
        resolve_accelerator("gpu")


@pytest.mark.parametrize("typo,suggestion", [("gpuu", "gpu"), ("atuo", "auto"), ("cpus", "cpu")])
def test_a_typo_suggests_the_name_it_meant(typo, suggestion):
    with pytest.raises(UserError) as caught:
        resolve_accelerator(typo)
    assert f'Did you mean "{suggestion}"?' in str(caught.value)
    assert "use one of: auto, cpu, cuda, gpu, mps" in str(caught.value)


def test_mps_is_refused_where_torch_has_no_mps(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(UserError, match="MPS"):
        resolve_accelerator("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_accelerator("mps") == "mps"


def test_a_user_error_is_the_clis_exit_2_kind():
    """The CLI turns UserError into a one-paragraph message with exit code 2 (no traceback)."""
    from benchmarks.__main__ import USER_ERRORS

    assert issubclass(UserError, USER_ERRORS)


# -- parse_devices ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("value,parsed", [("1", 1), ("4", 4), (" 2 ", 2), (3, 3), ("auto", "auto"),
                                          ("AUTO", "auto"), ("-1", -1), ("0,1", "0,1"), ("0, 2", "0,2"),
                                          ("1,", "1,")])
def test_device_values_lightning_reads_as_meant(value, parsed):
    assert parse_devices(value) == parsed
    assert type(parse_devices(value)) is type(parsed)


@pytest.mark.parametrize("value,problem", [("abc", "is not a number of devices"),
                                           ("", "is not a number of devices"),
                                           ("1.5", "is not a number of devices"),
                                           ("1_0", "is not a number of devices"),
                                           ("0", "at least 1, or -1 for all"),
                                           ("-3", "at least 1, or -1 for all"),
                                           ("0,a", "is not a list of GPU indices"),
                                           ("0,,1", "is not a list of GPU indices"),
                                           ("0,0", "names a GPU twice")])
def test_bad_device_values_name_the_option_and_the_fix(value, problem):
    with pytest.raises(UserError) as caught:
        parse_devices(value)
    message = str(caught.value)
    assert message.startswith(f'--devices "{value.strip()}" ') and problem in message.split("Fix:")[0]
    assert "Fix: " in message


@pytest.mark.parametrize("value", ["0,1", "1,", "-1"])
def test_the_cpu_takes_only_a_process_count(value):
    with pytest.raises(UserError, match="Fix: give the CPU a process count"):
        parse_devices(value, accelerator="cpu")
    assert parse_devices("2", accelerator="cpu") == 2
    assert parse_devices("auto", accelerator="cpu") == "auto"


def test_a_gpu_count_or_index_beyond_the_visible_gpus_is_an_error(two_gpus):
    assert parse_devices("2", accelerator="gpu") == 2
    assert parse_devices("0,1", accelerator="gpu") == "0,1"
    assert parse_devices("-1", accelerator="gpu") == -1
    for value in ("3", "0,2", "2,"):
        with pytest.raises(UserError, match="more GPUs than the 2 this process sees"):
            parse_devices(value, accelerator="gpu")


# -- gpu_count, describe ---------------------------------------------------------------------------------

def test_gpu_count_is_zero_without_cuda_and_the_visible_count_with_it(no_cuda, monkeypatch):
    assert gpu_count() == 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert gpu_count() == 4


def test_gpu_count_on_this_machine_agrees_with_torch():
    assert gpu_count() == (torch.cuda.device_count() if torch.cuda.is_available() else 0)


def test_describe_says_what_runs_the_training(two_gpus):
    assert describe("gpu") == "gpu (2 x Fake GPU visible)"
    assert describe("cpu") == f"cpu ({torch.get_num_threads()} threads)"


# -- through the command line ----------------------------------------------------------------------------

def test_the_cli_refuses_a_gpu_it_cannot_see_before_any_training(no_cuda, tmp_path, capsys):
    from benchmarks.__main__ import main

    code = main(["maml", "--profile", "smoke", "--accelerator", "gpu", "--results", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "error: --accelerator gpu asks for a GPU, but torch sees no CUDA device" in err and "Fix:" in err
    assert not list(tmp_path.glob("maml/*/run.yaml"))  # refused before the first run started


def test_the_cli_refuses_a_devices_value_lightning_would_misread(tmp_path, capsys):
    from benchmarks.__main__ import main

    code = main(["maml", "--profile", "smoke", "--accelerator", "cpu", "--devices", "abc", "--results", str(tmp_path)])
    assert code == 2
    assert '--devices "abc" is not a number of devices' in capsys.readouterr().err
