"""The offline W&B reader (wandb's own ``wandb leet inspect``) returns exactly what a real offline run logged."""

import wandb

from benchmarks.core.wandb_reader import find_offline_runs, leet_summary, read_offline_run


def test_reads_history_summary_config_and_metric_definitions(tmp_path):
    run = wandb.init(project="p", id="reader-test", dir=str(tmp_path), mode="offline", group="g", job_type="j",
                     config={"lr": 0.1, "model": {"depth": 4}}, settings=wandb.Settings(silent=True))
    run.define_metric("interp/*", step_metric="interp/lambda")
    for i in range(200):  # enough rows to cross the log's 32 KiB blocks
        run.log({"loss": 1.0 / (i + 1), "text": "x" * 300})
    run.log({"interp/lambda": 0.5, "interp/loss": 2.0})
    run.summary["final_acc"] = 0.75
    run.finish()
    (path,) = find_offline_runs(tmp_path)
    back = read_offline_run(path)
    assert back.run_id == "reader-test"
    assert back.series("loss") == [1.0 / (i + 1) for i in range(200)]
    assert back.series("interp/loss") == [2.0]
    assert back.summary["final_acc"] == 0.75 and back.summary["loss"] == 1.0 / 200
    assert back.config["lr"] == 0.1 and back.config["model"] == {"depth": 4}
    assert {"name": "interp/*", "step_metric": "interp/lambda"} in back.metric_definitions
    assert (back.group, back.job_type) == ("g", "j")
    assert back.keys() >= {"loss", "text", "interp/lambda", "interp/loss"}
    assert leet_summary(path)["summary"]["final_acc"] == 0.75


def test_a_directory_without_a_run_log_is_named_in_the_error(tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError, match="no run-\\*.wandb file"):
        read_offline_run(tmp_path)
