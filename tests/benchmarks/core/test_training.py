"""KeepWeights keeps a network's weights at the chosen steps or epochs, once each, and lists them back."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from benchmarks.core.training import KeepWeights, kept_weights
from tests.benchmarks.digits_study import DigitsModel, digits_loader


def fit(tmp_path, callback, epochs=2):
    L.seed_everything(0)
    model = DigitsModel()
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[callback], default_root_dir=str(tmp_path),
                        accelerator="cpu")
    trainer.fit(model, digits_loader(batch_size=200))  # 512 digits: 3 steps per epoch
    return model


def test_steps_are_kept_from_step_zero_and_listed_back(tmp_path):
    keep = KeepWeights(tmp_path / "weights", at=(0, 2, 6), unit="step")
    model = fit(tmp_path, keep)
    files = kept_weights(tmp_path / "weights")
    assert sorted(files) == [0, 2, 6]  # 2 epochs x 3 steps
    assert not torch.equal(torch.load(files[0])["net.weight"], torch.load(files[6])["net.weight"])
    assert torch.equal(torch.load(files[6])["net.weight"], model.state_dict()["net.weight"])


def test_epochs_are_kept_after_each_epoch_and_never_rewritten(tmp_path):
    keep = KeepWeights(tmp_path / "w", at=(0, 1, 2), unit="epoch", state=lambda m: {"w": m.net.weight})
    fit(tmp_path, keep)
    files = kept_weights(tmp_path / "w", "epoch")
    assert sorted(files) == [0, 1, 2] and set(torch.load(files[1])) == {"w"}
    stamp = files[1].stat().st_mtime_ns
    keep._keep(type("T", (), {"is_global_zero": True})(), None, 1)  # already there: not rewritten
    assert files[1].stat().st_mtime_ns == stamp


def test_unknown_unit_is_an_error():
    with pytest.raises(ValueError, match="step, epoch"):
        KeepWeights("w", at=(1,), unit="batch")


def test_the_epoch_checkpoint_saves_every_kth_epoch_and_the_last(tmp_path, monkeypatch):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from benchmarks.core.training import epoch_checkpoint

    saved = []
    original = ModelCheckpoint.on_train_epoch_end
    monkeypatch.setattr(ModelCheckpoint, "on_train_epoch_end",
                        lambda self, trainer, module: (saved.append(trainer.current_epoch + 1),
                                                       original(self, trainer, module)))
    L.seed_everything(0)
    trainer = L.Trainer(max_epochs=5, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[epoch_checkpoint(tmp_path / "checkpoints", every=2)],
                        default_root_dir=str(tmp_path), accelerator="cpu")
    trainer.fit(DigitsModel(), digits_loader(batch_size=256))
    assert saved == [2, 4, 5]
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 4
