"""RepresentationSnapshot: fixed probe, expected shapes, repeatable, written atomically with a manifest."""

import json

import pytest
import torch

from callbacks import CallbackConfigError, RepresentationSnapshot, select_probe
from callbacks.run_outputs import read_arrays
from tests.callbacks.tiny_callback_models import TinyClassifier, blob_images, loader, make_trainer


def test_probe_is_chosen_by_seed_and_never_changes():
    data = blob_images(50)
    first, again = select_probe(data, 10, seed=3), select_probe(data, 10, seed=3)
    other = select_probe(data, 10, seed=4)
    assert first.indices == again.indices and torch.equal(first.inputs, again.inputs)
    assert first.indices != other.indices
    assert torch.equal(first.inputs, data.tensors[0][first.indices])
    assert len(select_probe(data, 500)) == 50  # a small source is used whole


def test_unknown_pooling_is_refused_with_a_suggestion():
    with pytest.raises(CallbackConfigError, match='Did you mean "mean"'):
        RepresentationSnapshot(torch.zeros(2, 1, 16, 16), pooling="maen")


def test_callback_snapshots_at_fit_start_each_epoch_steps_and_writes_a_manifest(tmp_path):
    data = blob_images(32, seed=1)
    snap = RepresentationSnapshot(data, probe_size=10, every_n_epochs=1, every_n_steps=3, pooling="mean")
    trainer = make_trainer(tmp_path, [snap], epochs=2)
    trainer.fit(TinyClassifier(), loader(32, batch_size=8, shuffle=True))  # 4 steps per epoch
    tags = [s.tag for s in snap.snapshots]
    # fit end is not repeated: the last epoch snapshot already holds the final weights
    assert tags == ["fit_start", "step3", "epoch0", "step6", "epoch1"]
    assert [s.step for s in snap.snapshots] == [0, 3, 4, 6, 8]
    manifest = json.loads((tmp_path / "snapshots" / "manifest.json").read_text())
    assert manifest["probe"]["indices"] == snap.probe.indices and manifest["probe"]["size"] == 10
    assert [m["tag"] for m in manifest["snapshots"]] == tags
    for entry, snapshot in zip(manifest["snapshots"], snap.snapshots):
        assert entry["layers"] == {k: list(v.shape) for k, v in snapshot.representations.items()}
        on_disk = read_arrays(tmp_path / entry["file"])
        assert all(torch.equal(on_disk[k], snapshot.representations[k]) for k in on_disk)
    assert not list((tmp_path / "snapshots").glob(".*.tmp*"))  # atomic writes leave no temp files
    assert not torch.equal(snap.snapshots[0].representations["net.head"],
                           snap.snapshots[-1].representations["net.head"])  # training changed something


def test_take_on_demand_npz_and_bounded_memory(tmp_path):
    data = blob_images(16)
    snap = RepresentationSnapshot(data.tensors[0], probe_size=8, keep=2, file_format="npz", out_dir=tmp_path,
                                  at_fit_start=False, every_n_epochs=None, at_fit_end=True)
    model = TinyClassifier()
    trainer = make_trainer(tmp_path / "root", [snap], epochs=1)
    trainer.fit(model, loader(16))
    before = snap.take(model, "inner step 0")
    with torch.no_grad():
        model.net.head.weight.add_(1.0)
    after = snap.take(model, "inner step 1")
    assert [s.tag for s in snap.snapshots] == ["inner step 0", "inner step 1"]  # keep=2: fit_end dropped
    assert torch.equal(before.representations["net.block4"], after.representations["net.block4"])
    assert not torch.equal(before.representations["net.head"], after.representations["net.head"])
    files = sorted(p.name for p in (tmp_path / "snapshots").glob("*.npz"))
    assert files == ["00001_fit_end.npz", "00002_inner-step-0.npz", "00003_inner-step-1.npz"]
    on_disk = read_arrays(tmp_path / "snapshots" / files[-1])
    assert torch.equal(on_disk["net.head"], after.representations["net.head"])


def test_probe_defaults_to_the_datamodule_validation_set(tmp_path):
    from lightning.pytorch import LightningDataModule

    class Data(LightningDataModule):
        def train_dataloader(self):
            return loader(16)

        def val_dataloader(self):
            return loader(24, seed=5)

    snap = RepresentationSnapshot(probe_size=6, every_n_epochs=None, save=False)
    make_trainer(tmp_path, [snap], epochs=1, limit_val_batches=0).fit(TinyClassifier(), datamodule=Data())
    assert torch.equal(snap.probe.inputs, blob_images(24, seed=5).tensors[0][snap.probe.indices])
    assert [s.tag for s in snap.snapshots] == ["fit_start", "fit_end"]
