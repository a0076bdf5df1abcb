"""The command line: input mistakes end in one paragraph naming the fix (exit code 2, no traceback)."""

import pytest
import yaml

from benchmarks.__main__ import main
from benchmarks.perf.__main__ import ratio_lines
from tests.benchmarks.digits_study import REGISTRATION


@pytest.fixture(autouse=True)
def digits(monkeypatch):
    monkeypatch.setenv("TSUITE_EXTRA_STUDIES", REGISTRATION)


def error_of(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_unknown_study_suggests_one(capsys):
    assert 'Did you mean "digits"' in error_of(capsys, ["run", "digitz"])


def test_unknown_config_key_suggests_one(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"epochs": 1, "seeds": [0]}))
    err = error_of(capsys, ["digits", "--config", str(config), "--set", "epoch=2"])
    assert 'unknown config key "epoch"' in err and 'Did you mean "epochs"' in err


def test_malformed_config_names_the_line(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("epochs: 1\n seeds: [0]\n")
    assert "at line 2" in error_of(capsys, ["digits", "--config", str(config)])


def test_print_config_shows_the_resolved_values(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"epochs": 1, "seeds": [0]}))
    assert main(["digits", "--config", str(config), "--set", "epochs=7", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["epochs"] == 7


def test_status_lists_pending_runs(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"epochs": 1, "seeds": [0, 1]}))
    assert main(["status", "digits", "--config", str(config), "--results", str(tmp_path)]) == 0
    assert "0 finished" in capsys.readouterr().out.splitlines()[0]


def test_perf_table_reports_peer_over_ours():
    rows = [{"topic": "cka", "case": "N=10", "impl": "ours", "seconds": 1.0},
            {"topic": "cka", "case": "N=10", "impl": "peer", "seconds": 3.0, "error": 1e-3}]
    lines = ratio_lines(rows)
    assert lines[1].split()[-1] == "3.00x" and "1.0e-03" in lines[1]


def test_a_mistyped_study_at_the_top_level_lists_the_studies(capsys):
    err = error_of(capsys, ["segmentaton"])
    assert 'Did you mean "segmentation"' in err and "finetune, maml" in err


@pytest.mark.parametrize(("argv", "expected"), [
    (["--stage", "pretrian"], 'unknown stage "pretrian". Did you mean "pretrain"?'),
    (["--keys", "pretrain__seed=0__nothere"], "run key(s) not in this plan: pretrain__seed=0__nothere"),
    (["--set", "seeds=[]"], "plans no runs"),
])
def test_selecting_nothing_is_an_error_not_exit_zero(capsys, tmp_path, argv, expected):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"epochs": 1, "seeds": [0]}))
    err = error_of(capsys, ["digits", "--config", str(config), "--results", str(tmp_path), *argv])
    assert expected in err and "Fix:" in err
    assert not (tmp_path / "digits" / "report.md").exists()
