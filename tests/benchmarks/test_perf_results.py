"""`make perf --only X` adds its topics to results/perf.json and keeps the others."""

from __future__ import annotations

import json
from collections import Counter

from benchmarks.perf.__main__ import merge_results


def test_only_replaces_the_topics_it_measured(tmp_path):
    path = tmp_path / "perf.json"
    old = [{"topic": "maml", "impl": "ours", "seconds": 1.0}, {"topic": "similarity", "impl": "ours", "seconds": 2.0}]
    path.write_text(json.dumps({"rows": old}))
    merged = merge_results(path, [{"topic": "similarity", "impl": "ours", "seconds": 3.0}], quick=True)
    by_topic = {row["topic"]: row for row in merged["rows"]}
    assert by_topic["maml"]["seconds"] == 1.0
    assert by_topic["similarity"]["seconds"] == 3.0 and by_topic["similarity"]["quick"] is True
    assert len(merged["rows"]) == 2


def test_an_unreadable_old_file_is_replaced(tmp_path):
    path = tmp_path / "perf.json"
    path.write_text("{not json")
    merged = merge_results(path, [{"topic": "maml", "seconds": 1.0}], quick=False)
    assert [row["topic"] for row in merged["rows"]] == ["maml"]


def test_every_grid_case_is_a_sub_grid_of_its_tiny_profile_that_can_run_in_parallel():
    """`make perf --only grid` cuts each tiny grid with --set overrides; they must stay valid as profiles change."""
    from benchmarks.core.registry import get_study
    from benchmarks.core.runner import resolve_config
    from benchmarks.perf.perf_grid import CASES

    for study, cases in CASES.items():
        full_plan = get_study(study).plan(resolve_config(study, "tiny", []))
        for overrides in cases:
            plan = get_study(study).plan(resolve_config(study, "tiny", overrides))
            assert 1 < len(plan) <= len(full_plan), (study, overrides)
            ready_together = Counter(run.needs for run in plan)  # runs that wait for the same runs start together
            assert max(ready_together.values()) >= 2, (study, overrides)
