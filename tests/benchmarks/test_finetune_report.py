"""The fine-tuning report's verdicts come from the numbers: fabricated runs flip them."""

import copy

import pytest

from benchmarks.config import load_profile
from benchmarks.finetune import compute_findings, epoch_rows, write_report
from benchmarks.runstore import RunStore

LAYERS = ["block1", "block2", "block3", "block4", "head"]
TARGETS = ["same", "heldout", "cross", "permuted", "noise-0.25", "noise-0.5", "random"]
MODES = ["head", "full", "lower"]
SEEDS = [0, 1, 2]


DAMAGE = {"same": 0.0, "heldout": 0.3, "cross": 0.9, "permuted": 0.02, "noise-0.25": 0.3, "noise-0.5": 0.6,
          "random": 0.9}
BASE_ACC = {"same": 0.9, "heldout": 0.8, "cross": 0.6, "permuted": 0.9, "noise-0.25": 0.85, "noise-0.5": 0.8,
            "random": 0.2}
SHIFT = {"same": 0.0, "heldout": 0.05, "cross": 0.2}


def world(target: str, mode: str, seed: int, *, flip: bool) -> dict[str, float]:
    """Run metrics shaped like the published findings, or (flip) like their opposite, with seed jitter.

    Paper-like: similarity to start falls with depth, more so the less usable the pretrained features
    (cross-domain, noisier labels); head-only loses accuracy as the domain shifts. Flipped: similarity
    rises with depth from a low first layer, the reference target changes most, head-only wins.
    """
    jitter = 0.004 * (seed - 1)
    depth = [0.01, 0.03, 0.08, 0.25, 0.35]
    damage = DAMAGE[target]
    if flip:
        depth = [0.5, *reversed(depth[1:])]
        damage = 0.9 - damage
    cka = {layer: max(0.0, 1.0 - d - damage * d * 2.5) + jitter for layer, d in zip(LAYERS, depth)}
    shift = SHIFT.get(target, 0.0)
    gains = {"head": -shift, "full": 0.01, "lower": -shift / 2}
    if flip:
        gains = {"head": shift, "full": -0.01, "lower": shift / 2 - 0.05}
    acc = BASE_ACC[target] + gains[mode] + jitter
    return {"test_acc": acc, "train_acc": acc, "label_agreement": 1.0,
            **{f"linear_cka.start.{k}": v for k, v in cka.items()},
            **{f"linear_cka.random_init.{k}": 0.2 for k in LAYERS}}


def paper_like(target: str, mode: str, seed: int) -> dict[str, float]:
    return world(target, mode, seed, flip=False)


def flipped(target: str, mode: str, seed: int) -> dict[str, float]:
    return world(target, mode, seed, flip=True)


def fabricate(tmp_path, metrics_of) -> tuple[dict, RunStore]:
    cfg = load_profile("finetune", "tiny")
    cfg["profile"] = "tiny"
    store = RunStore("finetune", tmp_path)
    for target in TARGETS:
        for mode in MODES:
            for seed in SEEDS:
                key = f"finetune__{target}_{mode}_{seed}"
                record = {"study": "finetune", "stage": "finetune", "params": {"target": target, "mode": mode,
                                                                                "seed": seed},
                          "config": copy.deepcopy(cfg), "needs": [], "key": key}
                store.write_run_config(key, record)
                store.finish(key, metrics_of(target, mode, seed), wall_seconds=1.0)
    return cfg, store


def verdicts(cfg: dict, store: RunStore) -> dict[str, str]:
    findings = compute_findings(cfg, store.finished_runs())
    return {f.claim.split(":")[0].split("(")[0].strip(): f.verdict for f in findings}


def test_paper_like_numbers_make_every_finding_hold(tmp_path):
    cfg, store = fabricate(tmp_path, paper_like)
    results = verdicts(cfg, store)
    assert len(results) == 8
    assert set(results.values()) == {"holds"}, results


def test_opposite_numbers_make_the_findings_fail(tmp_path):
    cfg, store = fabricate(tmp_path, flipped)
    results = verdicts(cfg, store)
    assert results["Similarity to the start network falls with depth"] == "does not hold"
    assert results["Early layers stay near 1"] == "does not hold"
    assert results["Last block and head collapse for `cross`"] == "does not hold"
    assert results["Last block and head collapse for `random`"] == "does not hold"
    assert results["Full vs head-only accuracy gap grows with domain shift"] == "does not hold"
    assert results["Changing only the lower layers beats head-only fine-tuning on `cross`"] == "does not hold"
    assert results["Pre-trained structure is unlearned if not usable"] == "does not hold"


def test_the_report_shows_tables_and_findings_from_fabricated_runs(tmp_path):
    cfg, store = fabricate(tmp_path, paper_like)
    path = write_report(cfg, store)
    text = path.read_text()
    assert "| finding | verdict |" in text and "**holds**" in text
    assert "## Test accuracy" in text and "| target | data | head | full | lower |" in text
    assert "| target | mode | block1 | block2 | block3 | block4 | head |" in text
    summary = (store.root / "summary.csv").read_text().splitlines()
    assert len(summary) == 1 + len(TARGETS) * len(MODES) * len(SEEDS)
    assert (store.root / "figures" / "final_start.png").read_bytes()[:4] == b"\x89PNG"


def test_without_runs_the_report_says_so_instead_of_guessing(tmp_path):
    cfg = load_profile("finetune", "tiny")
    findings = compute_findings(cfg, [])
    assert [f.verdict for f in findings] == ["inconclusive"]


def test_epoch_rows_number_epochs_and_drop_the_start_snapshot_of_a_resumed_fit():
    def row(moment, epoch, step, value):
        return {"moment": moment, "epoch": epoch, "step": step, "reference": "start", "layer": "net.head",
                "value": value, "tag": moment}

    # a first fit over epochs 0-1, interrupted during epoch 2 and resumed from the checkpoint of epoch 1
    rows = [row("fit_start", 0, 0, 1.0), row("epoch", 0, 10, 0.9), row("epoch", 1, 20, 0.8),
            row("epoch", 2, 30, 0.75), row("fit_start", 0, 0, 0.8), row("epoch", 2, 30, 0.7)]
    assert [(r["x"], r["value"]) for r in epoch_rows(rows)] == [(0, 1.0), (1, 0.9), (2, 0.8), (3, 0.7)]


@pytest.mark.parametrize("bad, match", [
    ({"finetune": {"modes": ["haed"]}}, 'Did you mean "head"'),
    ({"finetune": {"targets": ["crosss"]}}, 'Did you mean "cross"'),
])
def test_bad_grid_names_are_refused_with_a_suggestion(bad, match):
    from benchmarks.errors import UserError
    from benchmarks.finetune import FinetuneStudy

    cfg = load_profile("finetune", "tiny")
    for section, values in bad.items():
        cfg[section].update(values)
    with pytest.raises(UserError, match=match):
        FinetuneStudy().plan(cfg)


def test_layers_are_listed_in_network_order_even_though_metrics_are_stored_sorted():
    from benchmarks.finetune import _layers

    names = ["act1", "layer1", "layer2", "layer3", "layer4", "fc"]
    metrics = {f"linear_cka.start.{n}": 0.5 for n in sorted(names)}
    metrics.update({f"depth.{n}": float(i) for i, n in enumerate(names)})
    run = {"metrics": dict(sorted(metrics.items())), "config": {"similarity": {"measures": ["linear_cka"]}}}
    assert _layers([run], "linear_cka") == names
