"""SimilarityTracker: per-layer similarity with references over training, heatmaps, files and W&B."""

import json
import math

import pytest
import torch

from callbacks import (
    CallbackConfigError,
    RepresentationSnapshot,
    RepresentationsReference,
    SimilarityTracker,
    WeightsReference,
)
from similarity import PreparedReference, get_measure, linear_cka, similarity_matrix
from tests.callbacks.tiny_callback_models import (
    TinyClassifier,
    blob_images,
    loader,
    make_trainer,
    media_types,
    read_wandb,
    wandb_logger,
)

LAYERS = ["net.block1", "net.block2", "net.block3", "net.block4", "net.head"]


def values(tracker, reference, tag):
    return {r["layer"]: r["value"] for r in tracker.rows if r["reference"] == reference and r["tag"] == tag}


def run(tmp_path, model, references=("start", "random_init"), epochs=3, logger=None, **tracker_kw):
    snap = RepresentationSnapshot(blob_images(40, seed=7), probe_size=40)
    tracker = SimilarityTracker(references, "linear_cka", **tracker_kw)
    trainer = make_trainer(tmp_path, [tracker, snap], epochs=epochs, logger=logger)  # order does not matter
    trainer.fit(model, loader(64, batch_size=16, shuffle=True))
    return snap, tracker


def test_a_snapshot_is_fully_similar_to_itself_and_a_frozen_layer_stays_so(tmp_path):
    snap, tracker = run(tmp_path, TinyClassifier(frozen=("net.block1",), lr=0.2))
    at_start = values(tracker, "start", "fit_start")
    assert list(at_start) == LAYERS
    assert all(v == pytest.approx(1.0, abs=1e-6) for v in at_start.values())
    final = values(tracker, "start", snap.latest.tag)
    assert final["net.block1"] == pytest.approx(1.0, abs=1e-6)  # frozen: unchanged representations
    assert final["net.head"] < 0.999  # trained layers moved away from their start
    random_init = values(tracker, "random_init", "fit_start")
    assert all(0.0 <= v < 0.999 for v in random_init.values())


def test_rows_are_reported_to_files_and_to_wandb(tmp_path):
    snap, tracker = run(tmp_path, TinyClassifier(), epochs=2, logger=wandb_logger(tmp_path))
    saved = json.loads((tmp_path / "similarity.json").read_text())
    assert saved["rows"] == tracker.rows and saved["measure"] == "linear_cka"
    assert {r["tag"] for r in saved["rows"]} == {"fit_start", "epoch0", "epoch1"}
    csv_lines = (tmp_path / "similarity.csv").read_text().splitlines()
    header = ["tag", "epoch", "step", "moment", "reference", "layer", "measure", "value"]
    assert csv_lines[0].split(",") == header
    assert len(csv_lines) == 1 + len(tracker.rows) == 1 + 3 * 2 * len(LAYERS)
    for ref in ("start", "random_init"):
        matrix = json.loads((tmp_path / f"similarity_matrix_{ref}.json").read_text())
        assert matrix["rows"] == LAYERS and matrix["columns"] == LAYERS and matrix["tag"] == "epoch1"
        diagonal = [matrix["values"][i][i] for i in range(len(LAYERS))]
        per_layer = values(tracker, ref, "epoch1")
        assert diagonal == pytest.approx([per_layer[layer] for layer in LAYERS], abs=1e-9)
        assert (tmp_path / f"similarity_matrix_{ref}.png").read_bytes()[:4] == b"\x89PNG"
        assert (tmp_path / f"similarity_curves_{ref}.png").stat().st_size > 0

    wandb_run = read_wandb(tmp_path)
    for layer in LAYERS:
        logged = wandb_run.series(f"sim/start/{layer}")
        assert logged == pytest.approx([r["value"] for r in tracker.rows
                                        if r["reference"] == "start" and r["layer"] == layer])
    steps = [row["trainer/global_step"] for row in wandb_run.history if "sim/start/net.head" in row]
    assert steps == [s.step for s in snap.snapshots]
    media = media_types(wandb_run)
    assert media["sim/start/matrix"] == "table-file" and media["sim/start/matrix_image"] == "image-file"
    assert media["sim/random_init/curves_image"] == "image-file"


def test_other_weights_and_precomputed_representations_as_references(tmp_path):
    model = TinyClassifier(seed=1)
    same_weights = {k: v.clone() for k, v in model.state_dict().items()}
    snap = RepresentationSnapshot(blob_images(20).tensors[0], probe_size=20, every_n_epochs=None, save=False)
    start_reps = snap.capture(model)
    references = {"same": WeightsReference(same_weights), "given": RepresentationsReference(start_reps),
                  "other": TinyClassifier(seed=2)}
    # a plain function (not a registry measure) is only called on same-layer pairs
    tracker = SimilarityTracker(references, linear_cka, snapshots=snap, heatmaps="never")
    make_trainer(tmp_path, [snap, tracker], epochs=1).fit(model, loader(16))
    for name in ("same", "given"):
        assert all(v == pytest.approx(1.0, abs=1e-6) for v in values(tracker, name, "fit_start").values())
    assert values(tracker, "other", "fit_start")["net.head"] < 0.999
    assert {r["measure"] for r in tracker.rows} == {"linear_cka"}
    assert not list(tmp_path.glob("similarity_matrix_*"))


def test_bad_references_and_missing_snapshot_callback_are_explained(tmp_path):
    with pytest.raises(CallbackConfigError, match='Did you mean "random_init"'):
        SimilarityTracker(("random-init",))
    tracker = SimilarityTracker(("start",))
    with pytest.raises(CallbackConfigError, match="needs exactly one RepresentationSnapshot"):
        make_trainer(tmp_path, [tracker], epochs=1).fit(TinyClassifier(), loader(16))


def test_similarity_is_computed_by_the_measure_of_similarity_package(tmp_path):
    x = torch.randn(30, 5, dtype=torch.float64)
    cka = get_measure("linear_cka")
    assert math.isclose(cka(x, x), 1.0, abs_tol=1e-12)


def test_linear_cka_uses_a_prepared_reference_and_reports_the_values_of_similarity_matrix(tmp_path):
    snapshot = RepresentationSnapshot(blob_images(30, seed=7), probe_size=30, keep=None, save=False)
    tracker = SimilarityTracker(("start", "random_init"), "linear_cka")
    make_trainer(tmp_path, [snapshot, tracker], epochs=2).fit(TinyClassifier(), loader(32, shuffle=True))
    assert isinstance(tracker._prepared[1], PreparedReference)
    for snap in snapshot.snapshots:
        for ref, reps in tracker.reference_reps.items():
            expected, _, _ = similarity_matrix({k: v.flatten(1) for k, v in snap.representations.items()},
                                               {k: v.flatten(1) for k, v in reps.items()}, "linear_cka")
            rows = {r["layer"]: r["value"] for r in tracker.rows if r["tag"] == snap.tag and r["reference"] == ref}
            assert list(rows.values()) == pytest.approx(expected.diagonal().tolist(), abs=1e-12)
