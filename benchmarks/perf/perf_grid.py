"""Grid throughput: a study's tiny sub-grid with ``--jobs auto`` vs ``--jobs 1``, side by side.

Each case runs the same fixed sub-grid of a tiny profile from the command line, as a user does, into a
fresh results directory, alternating ``--jobs 1`` and ``--jobs auto`` so that load on a shared machine
hits both alike; ``seconds`` is the median wall time, CPU utilisation is (user + system) / wall of the
whole process tree. The verdicts of both are compared: concurrency must not change a finding (metrics
differ in the last float bits only, from the different intra-op thread count per run).
Goal on a 2-core CPU: >= 1.4x for segmentation and fine-tuning, >= 1.6x for MAML.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# study -> the --set overrides that cut its tiny grid to a sub-grid (full, quick)
CASES: dict[str, tuple[list[str], list[str]]] = {
    "segmentation": (["seeds=[0]", "target.label_fractions=[0.25]"],
                     ["seeds=[0]", "target.label_fractions=[0.25]",
                      "grid.encoder_sources=[random,imagenet,segmentation]", "grid.controls=[]"]),
    "finetune": (["seeds=[0,1]", "finetune.targets=[same,heldout,cross]"],
                 ["seeds=[0]", "finetune.targets=[same,heldout]", "source.epochs=1", "finetune.epochs=2"]),
    "maml": (["maml.meta_steps=300", "maml.test_tasks=200"],
             ["maml.meta_steps=60", "maml.test_tasks=50", "maml.steps_per_epoch=20", "control.test_tasks=20"]),
}


def _benchmark(study: str, overrides: list[str], jobs: str, results: Path) -> dict:
    """One run of the sub-grid: wall seconds, verdicts, number of runs."""
    command = [sys.executable, "-m", "benchmarks", study, "--profile", "tiny", "--jobs", jobs,
               "--accelerator", "cpu", "--results", str(results)]
    for item in overrides:
        command += ["--set", item]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "WANDB_MODE": "offline"})
    _, stderr = process.communicate()
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {process.returncode}:\n{stderr[-3000:]}")
    findings = json.loads((results / study / "findings.json").read_text())
    runs = sum(1 for d in (results / study).iterdir() if (d / "metrics.json").exists())
    return {"wall": wall, "verdicts": {f["id"]: f["verdict"] for f in findings["findings"]}, "runs": runs}


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(study: str, overrides: list[str], jobs: str) -> dict:
    """The sub-grid in a fresh results directory, with the CPU seconds of its whole process tree."""
    before = _children_cpu()
    with tempfile.TemporaryDirectory(prefix=f"perf-grid-{study}-") as tmp:
        result = _benchmark(study, overrides, jobs, Path(tmp))
    result["cpu"] = _children_cpu() - before
    return result


def run(quick: bool = False, studies: tuple[str, ...] = ("segmentation", "finetune", "maml")) -> list[dict]:
    """Median wall time of each study's sub-grid at --jobs 1 and --jobs auto, alternated."""
    from benchmarks.core.grid import available_cores

    repeats = 1 if quick else 2
    rows = []
    for study in studies:
        overrides = CASES[study][1 if quick else 0]
        measured: dict[str, list[dict]] = {"1": [], "auto": []}
        for _ in range(repeats):
            for jobs in ("1", "auto"):
                measured[jobs].append(_timed(study, overrides, jobs))
        one, auto = measured["1"], measured["auto"]
        same = all(r["verdicts"] == one[0]["verdicts"] for r in one + auto)
        verdicts = "verdicts identical" if same else "VERDICTS DIFFER: " + "; ".join(
            f"{jobs}: {r['verdicts']}" for jobs in measured for r in measured[jobs])
        case = f"{study} tiny sub-grid, {one[0]['runs']} runs, {available_cores()} cores"
        for impl, results in (("ours", auto), ("jobs-1", one)):
            wall = statistics.median(r["wall"] for r in results)
            cpu = statistics.median(r["cpu"] / r["wall"] for r in results)
            label = "--jobs auto" if impl == "ours" else "--jobs 1 (one run at a time, all threads)"
            rows.append({"topic": "grid", "case": case, "impl": impl, "seconds": wall,
                         "note": f"{label}; CPU {100 * cpu:.0f}%; {verdicts}; {' '.join(overrides)}"})
    return rows


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(row)
