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
