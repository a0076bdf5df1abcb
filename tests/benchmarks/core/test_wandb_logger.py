"""The logger factory's local CSV copy survives a resume (Lightning's own CSVLogger deletes it)."""

from __future__ import annotations

import csv

from benchmarks.core.wandb_logger import AppendingCSVLogger


def _rows(path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_a_resumed_run_continues_the_csv_and_widens_its_header(tmp_path):
    first = AppendingCSVLogger(save_dir=str(tmp_path), name="csv", version="")
    first.log_metrics({"train/loss": 1.0}, step=0)
    first.log_metrics({"train/loss": 0.5}, step=1)
    first.save()
    resumed = AppendingCSVLogger(save_dir=str(tmp_path), name="csv", version="")
    resumed.log_metrics({"train/loss": 0.25, "val/dice": 0.7}, step=2)
    resumed.save()
    rows = _rows(tmp_path / "csv" / "metrics.csv")
    assert [row["step"] for row in rows] == ["0", "1", "2"]
    assert [row["train/loss"] for row in rows] == ["1.0", "0.5", "0.25"]
    assert rows[0]["val/dice"] == "" and rows[2]["val/dice"] == "0.7"


def test_a_fresh_directory_starts_a_new_file(tmp_path):
    logger = AppendingCSVLogger(save_dir=str(tmp_path), name="csv", version="")
    logger.log_metrics({"a": 1.0}, step=0)
    logger.save()
    assert _rows(tmp_path / "csv" / "metrics.csv") == [{"a": "1.0", "step": "0"}]


def test_the_findings_reach_wandb_as_a_table_of_a_study_level_run(study, tmp_path):
    """A dashboard shows the verdicts: findings.json as a W&B table, read back with wandb's own reader."""
    import json

    from benchmarks.core import runner
    from benchmarks.core.runstore import RunStore
    from benchmarks.core.wandb_reader import find_offline_runs, leet_summary

    assert runner.run_benchmark("digits", {"epochs": 1, "seeds": [0, 1], "profile": "test"},
                                runner.Launch(results=str(tmp_path))) == 0
    root = RunStore("digits", tmp_path).root
    (part,) = find_offline_runs(root / "wandb")
    summary = leet_summary(part)
    findings = json.loads((root / "findings.json").read_text())["findings"]
    assert summary["name"] == "findings (test)" and summary["state"] == "finished"
    table = summary["summary"]["findings"]
    assert table["_type"] == "table-file" and table["nrows"] == len(findings)
    logged = json.loads((part / "files" / table["path"]).read_text())
    verdicts = {row[0]: row[1] for row in logged["data"]}
    assert verdicts == {f["id"]: f["verdict"] for f in findings}
    assert summary["summary"][f"finding/{findings[0]['id']}/holds"] == float(findings[0]["verdict"] == "holds")
