"""MAMLModule under a real Lightning Trainer: meta-batches, manual optimisation, evaluation, analysis."""

from __future__ import annotations

import copy

import learn2learn as l2l
import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from modules.maml import MAMLConfigError, MAMLModule, mean_ci95
from tests.threads import one_thread  # noqa: F401  (autouse: one intra-op thread)

WAYS, SHOTS, QUERIES, IMAGE = 3, 1, 2, 16



def synthetic_meta_batches(num_batches: int, tasks_per_batch: int = 4, seed: int = 0) -> list[tuple]:
    """Tasks whose classes are fixed random prototypes plus noise: learnable, and cheap."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(12, 1, IMAGE, IMAGE, generator=g)
    batches = []
    for _ in range(num_batches):
        sx, sy, qx, qy = [], [], [], []
        for _ in range(tasks_per_batch):
            classes = torch.randperm(12, generator=g)[:WAYS]
            labels_s = torch.arange(WAYS).repeat_interleave(SHOTS)
            labels_q = torch.arange(WAYS).repeat_interleave(QUERIES)
            sx.append(prototypes[classes[labels_s]] + 0.3 * torch.randn(WAYS * SHOTS, 1, IMAGE, IMAGE, generator=g))
            qx.append(prototypes[classes[labels_q]] + 0.3 * torch.randn(WAYS * QUERIES, 1, IMAGE, IMAGE, generator=g))
            sy.append(labels_s)
            qy.append(labels_q)
        batches.append((torch.stack(sx), torch.stack(sy), torch.stack(qx), torch.stack(qy)))
    return batches


def loader(batches: list[tuple]) -> DataLoader:
    return DataLoader(batches, batch_size=None, shuffle=False)


def small_module(**kwargs) -> MAMLModule:
    torch.manual_seed(0)
    options = dict(hidden=8, image_size=IMAGE, inner_steps=1, inner_steps_test=3, inner_lr=0.4, meta_lr=3e-3)
    options.update(kwargs)
    return MAMLModule(WAYS, **options)


def comparable(name: str) -> bool:
    """A conv bias before batch norm has a zero meta-gradient up to rounding, which Adam's
    normalisation turns into full steps of arbitrary sign: nothing to compare there."""
    return not (name.startswith("net.block") or name.startswith("block")) or not name.endswith(".0.bias")


def trainer(**kwargs) -> L.Trainer:
    options = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False)
    options.update(kwargs)
    return L.Trainer(**options)


def test_one_training_step_is_an_adam_step_on_learn2learn_meta_gradient():
    module = small_module(first_order=False, inner_steps=2)
    reference = copy.deepcopy(module.net)
    batch = synthetic_meta_batches(1)[0]
    trainer(max_steps=1).fit(module, train_dataloaders=loader([batch]))

    maml = l2l.algorithms.MAML(reference, lr=0.4)
    optimizer = torch.optim.Adam(reference.parameters(), lr=3e-3)
    for sx, sy, qx, qy in zip(*batch):
        learner = maml.clone()
        for _ in range(2):
            learner.adapt(F.cross_entropy(learner(sx), sy))
        (F.cross_entropy(learner(qx), qy) / len(batch[0])).backward()
    optimizer.step()
    for (name, ours), theirs in zip(module.net.named_parameters(), reference.parameters()):
        if not comparable(name):
            continue
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6, msg=f"{name} differs")


def test_meta_training_improves_held_out_task_accuracy():
    module = small_module()
    held_out = synthetic_meta_batches(3, seed=99)
    before = torch.cat([module.evaluate_tasks(b)[1] for b in held_out]).mean()
    trainer(max_steps=40).fit(module, train_dataloaders=loader(synthetic_meta_batches(40)))
    after = torch.cat([module.evaluate_tasks(b)[1] for b in held_out]).mean()
    assert after > before + 0.1, (before, after)


def test_test_loop_reports_accuracy_with_a_confidence_interval_per_task():
    module = small_module()
    batches = synthetic_meta_batches(3, tasks_per_batch=5, seed=5)
    result = trainer().test(module, dataloaders=loader(batches), verbose=False)[0]
    assert module.test_task_accuracies.shape == (15,)
    mean, half = mean_ci95(module.test_task_accuracies)
    assert result["test/acc"] == pytest.approx(mean)
    assert result["test/acc_ci95"] == pytest.approx(half) and half > 0


def test_validation_runs_under_inference_mode():
    module = small_module()
    result = trainer().validate(module, dataloaders=loader(synthetic_meta_batches(2)), verbose=False)[0]
    assert 0.0 <= result["val/acc"] <= 1.0


def test_learned_per_layer_inner_rates_are_meta_trained():
    module = small_module(inner_lr_mode="per_layer")
    assert len(module.inner_lrs) == len(list(module.net.parameters()))
    trainer(max_steps=3).fit(module, train_dataloaders=loader(synthetic_meta_batches(3)))
    rates = torch.stack([lr.detach() for lr in module.inner_lrs])
    assert not torch.allclose(rates, torch.full_like(rates, 0.4))


def test_meta_sgd_has_one_rate_per_weight():
    module = small_module(inner_lr_mode="per_element")
    assert [lr.shape for lr in module.inner_lrs] == [p.shape for p in module.net.parameters()]


def test_anil_adapts_the_head_only_and_its_body_activations_do_not_move():
    module = small_module(algorithm="anil")
    assert module.adapted_names == ("head.weight", "head.bias")
    sx, sy, qx, _ = synthetic_meta_batches(1)[0]
    acts = module.adaptation_activations(sx[0], sy[0], qx[0][:WAYS], record=(0, 1, 3))
    assert sorted(acts) == [0, 1, 3]
    for layer in ("block1", "block2", "block3", "block4"):
        assert torch.equal(acts[0][layer], acts[3][layer]), layer
    assert not torch.equal(acts[0]["head"], acts[3]["head"])


def test_maml_adaptation_moves_every_layer():
    module = small_module()
    sx, sy, qx, _ = synthetic_meta_batches(1)[0]
    acts = module.adaptation_activations(sx[0], sy[0], qx[0][:WAYS], record=(0, 2))
    for layer in ("block1", "block4", "head"):
        assert not torch.equal(acts[0][layer], acts[2][layer]), layer


def test_checkpoint_round_trip_keeps_weights_and_learned_rates(tmp_path):
    module = small_module(inner_lr_mode="per_layer")
    fit = trainer(max_steps=2, enable_checkpointing=True, default_root_dir=tmp_path)
    fit.fit(module, train_dataloaders=loader(synthetic_meta_batches(2)))
    path = tmp_path / "m.ckpt"
    fit.save_checkpoint(path)
    loaded = MAMLModule.load_from_checkpoint(path)
    for a, b in zip(module.state_dict().values(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_the_vmap_engine_trains_the_same_as_the_loop():
    batches = synthetic_meta_batches(2)
    states = []
    for engine in ("loop", "vmap"):
        module = small_module(engine=engine, first_order=False)
        trainer(max_steps=2).fit(module, train_dataloaders=loader(batches))
        states.append(module.state_dict())
    for key in filter(comparable, states[0]):
        torch.testing.assert_close(states[0][key], states[1][key], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"algorithm": "anill"}, 'Did you mean "anil"'),
    ({"inner_lr_mode": "per-layer"}, 'Did you mean "per_layer"'),
    ({"engine": "vmapp"}, 'Did you mean "vmap"'),
    ({"inner_steps": -1}, "non-negative"),
])
def test_bad_settings_name_the_problem_and_the_fix(kwargs, message):
    with pytest.raises(MAMLConfigError, match=message):
        small_module(**kwargs)
