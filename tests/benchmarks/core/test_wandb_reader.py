"""The offline W&B reader returns exactly what a real wandb 0.31 offline run logged."""

import wandb

from benchmarks.core.wandb_reader import find_offline_runs, read_offline_run


def test_reads_history_summary_config_and_metric_definitions(tmp_path):
    run = wandb.init(project="p", id="reader-test", dir=str(tmp_path), mode="offline", group="g", job_type="j",
                     config={"lr": 0.1, "model": {"depth": 4}}, settings=wandb.Settings(silent=True))
    run.define_metric("interp/*", step_metric="interp/lambda")
    for i in range(200):  # enough rows to cross 32 KiB blocks
        run.log({"loss": 1.0 / (i + 1), "text": "x" * 300})
    run.log({"interp/lambda": 0.5, "interp/loss": 2.0})
    run.summary["final_acc"] = 0.75
    run.finish()
    (path,) = find_offline_runs(tmp_path)
    back = read_offline_run(path)
    assert back.run_id == "reader-test"
    assert back.series("loss") == [1.0 / (i + 1) for i in range(200)]
    assert back.series("interp/loss") == [2.0]
    assert back.summary["final_acc"] == 0.75
    assert back.config["lr"] == 0.1 and back.config["model"] == {"depth": 4}
    assert {"name": "interp/*", "step_metric": "interp/lambda"} in back.metric_definitions
    assert (back.group, back.job_type) == ("g", "j")
