"""The transfer report's verdicts follow the numbers: fabricated finished runs in a temp store, then flipped."""

import pytest

from benchmarks.runner import resolve_config
from benchmarks.runstore import RunStore
from benchmarks.transfer import TransferStudy
from benchmarks.transfer_findings import findings
from benchmarks.transfer_report import write_report
from benchmarks.transfer_results import collect

LAYERS = ("block1", "block2", "block3", "block4", "head")


def _metrics(run, flip: bool) -> dict:
    """Numbers for one run in which every finding holds (flip=False) or is reversed (flip=True)."""
    p = run.params
    jitter = 0.002 * p.get("seed", 0)
    sign = -1.0 if flip else 1.0
    if run.stage == "pretrain":
        return {"source_acc@0": 0.1, "source_acc@1": 0.5, "source_acc@2": 0.7, "source_acc@4": 0.8}
    if run.stage == "train":
        size = run.config["source"]["image_size"]
        # P-T gains 0.05 + 0.1 * (block / size): positive everywhere, larger for bigger blocks
        gain = (0.05 + 0.1 * p["block"] / size) * sign
        pt = p["init"] == "pretrained"
        acc = 0.6 + (gain if pt else 0.0) + jitter
        return {"test_acc": acc, "speed_train_acc": 0.4 + (0.1 * sign if pt else 0.0) + jitter}
    if run.stage == "pairs":
        out = {}
        for index, pair in enumerate(("0-1", "0-2", "1-2")):
            j = 0.001 * index
            for kind, cka, l2, barrier in (("PT-PT", 0.9, 3.0, 0.01), ("PT-RT", 0.5, 15.0, 1.0),
                                           ("RT-RT", 0.6, 14.0, 1.5)):
                if flip and kind != "PT-RT":
                    cka, l2, barrier = {"PT-PT": (0.5, 20.0, 2.0), "RT-RT": (0.9, 3.0, 0.01)}[kind]
                for layer in LAYERS:
                    out[f"cka/{kind}/{pair}/{layer}"] = cka + j
                    out[f"l2/{kind}/{pair}/{layer}"] = l2 / 3 + j
                out[f"l2/{kind}/{pair}/total"] = l2 + j
                out[f"loss_barrier/{kind}/{pair}"] = barrier + j
                out[f"error_barrier/{kind}/{pair}"] = barrier / 3 + j
                out[f"min_acc/{kind}/{pair}"] = 0.8 - barrier / 3
                out[f"end_acc/{kind}/{pair}"] = 0.8
        return out
    if run.stage == "criticality":
        out = {}
        for depth, layer in enumerate(LAYERS):
            order = len(LAYERS) - 1 - depth if flip else depth
            out[f"depth/{layer}"] = depth
            out[f"criticality/{layer}"] = 10.0 ** order * (1 + jitter)
            out[f"rewind_error/{layer}"] = 0.1 * order
        return out
    if run.stage == "checkpoint":
        # earlier checkpoints match the last one, the intact P-T run (flip: they fall well short of it)
        return {"test_acc": 0.6 + 0.15 * sign + jitter - (0.2 if flip else 0.0), "speed_train_acc": 0.4}
    return {}


def _store(tmp_path, cfg, flip: bool) -> RunStore:
    store = RunStore("transfer", tmp_path / ("flipped" if flip else "straight"))
    for run in TransferStudy().plan(cfg):
        if run.stage == "aggregate":
            continue
        store.write_run_config(run.key, run.record())
        store.finish(run.key, _metrics(run, flip), wall_seconds=1.0)
    return store


@pytest.fixture
def cfg():
    return resolve_config("transfer", "smoke", ["seeds=[0, 1, 2]", "checkpoints.seeds=[0, 1, 2]"])


def _verdicts(cfg, store) -> dict[str, str]:
    return {f.claim.split("] ", 1)[1].split(" (")[0]: f.verdict for f in findings(collect(TransferStudy(), cfg, store))}


def test_every_finding_holds_when_the_runs_show_it(tmp_path, cfg):
    verdicts = _verdicts(cfg, _store(tmp_path, cfg, flip=False))
    assert len(verdicts) == 9
    assert set(verdicts.values()) == {"holds"}, verdicts


def test_the_verdicts_flip_when_the_numbers_flip(tmp_path, cfg):
    verdicts = _verdicts(cfg, _store(tmp_path, cfg, flip=True))
    assert verdicts == {
        "P-T beats R-T at every block size": "does not hold",
        "P-T's advantage shrinks as blocks get smaller": "does not hold",
        "P-T trains faster even where its accuracy gain vanishes": "does not hold",
        "two P-T runs are more similar": "does not hold",
        "two P-T runs are closer in weight space": "does not hold",
        "no barrier between P-T solutions": "does not hold",
        "a clear barrier between R-T solutions": "does not hold",
        "lower layers are less critical than higher ones": "does not hold",
        "the best downstream result need not come from the last pretraining checkpoint": "does not hold",
    }


def test_the_report_is_written_from_fabricated_runs_without_their_files(tmp_path, cfg):
    store = _store(tmp_path, cfg, flip=False)
    text = write_report(TransferStudy(), cfg, store).read_text()
    assert text.count("| **holds** |") == 9
    assert "| fmnist | 1 (pixel shuffle) |" in text and "| fmnist | 28 (intact) |" in text
    assert (store.root / "summary.csv").read_text().startswith("source,block size b,")
    assert (store.root / "figures" / "fmnist_accuracy.png").exists()


def test_missing_runs_make_findings_inconclusive_not_wrong(tmp_path, cfg):
    store = RunStore("transfer", tmp_path / "empty")
    assert set(_verdicts(cfg, store).values()) == {"inconclusive"}
