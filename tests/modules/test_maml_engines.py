"""The inner-loop engines give learn2learn's meta-gradients (float64, batch norm in the model).

learn2learn's ``MAML``/``MetaSGD`` (clone, adapt, one backward per task) is the numerical
reference; both engines must agree with it to 1e-10 for first and second order, 1 and 5 inner
steps. ANIL is checked against learn2learn's recipe (a body + ``MAML`` on the head).
"""

from __future__ import annotations

import copy

import learn2learn as l2l
import pytest
import torch
import torch.nn.functional as F

from modules.meta_engines import InnerLoop, LoopEngine, TaskBatch, VmapEngine, functional_options, make_engine
from modules.nets.conv4 import Conv4
from modules.nets.functional import FunctionalConv4, batch_norm_elementary, batch_norm_native
from tests.threads import one_thread  # noqa: F401  (autouse: one intra-op thread)

WAYS, SHOTS, QUERIES, TASKS = 5, 1, 2, 3
INNER_LR = 0.4
TOLERANCE = 1e-10


def make_tasks(seed: int = 1, image_size: int = 16) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    sx = torch.randn(TASKS, WAYS * SHOTS, 1, image_size, image_size, generator=g, dtype=torch.float64)
    qx = torch.randn(TASKS, WAYS * QUERIES, 1, image_size, image_size, generator=g, dtype=torch.float64)
    sy = torch.stack([torch.randperm(WAYS, generator=g).repeat_interleave(SHOTS) for _ in range(TASKS)])
    qy = torch.arange(WAYS).repeat_interleave(QUERIES).expand(TASKS, -1).clone()
    return TaskBatch(sx, sy, qx, qy)



@pytest.fixture(scope="module")
def net() -> Conv4:
    torch.manual_seed(0)
    return Conv4(WAYS, hidden=6, image_size=16, track_running_stats=False).double()


def learn2learn_meta_gradient(net: Conv4, tasks: TaskBatch, steps: int, first_order: bool,
                              algorithm: str = "maml") -> dict[str, torch.Tensor]:
    """Sum over tasks of d(query loss after adaptation)/d(meta-parameters), the learn2learn way."""
    model = copy.deepcopy(net)
    if algorithm == "maml":
        learner = l2l.algorithms.MAML(model, lr=INNER_LR, first_order=first_order)
    elif algorithm == "metasgd":
        learner = l2l.algorithms.MetaSGD(model, lr=INNER_LR, first_order=first_order)
    else:  # ANIL: the body is shared, learn2learn's MAML wraps the head only
        learner = l2l.algorithms.MAML(model.head, lr=INNER_LR, first_order=first_order)
    for index in range(len(tasks)):
        sx, sy, qx, qy = tasks.task(index)
        clone = learner.clone()
        if algorithm == "anil":
            support_features, query_features = model.features(sx), model.features(qx)
            for _ in range(steps):
                clone.adapt(F.cross_entropy(clone(support_features), sy))
            F.cross_entropy(clone(query_features), qy).backward()
        else:
            for _ in range(steps):
                clone.adapt(F.cross_entropy(clone(sx), sy))
            F.cross_entropy(clone(qx), qy).backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    if algorithm == "metasgd":
        grads.update({f"inner_lr:{name}": lr.grad for (name, _), lr in zip(model.named_parameters(), learner.lrs)})
    return grads


def max_error(ours: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    assert set(ours) == set(reference)
    return max((ours[k] - reference[k]).abs().max().item() for k in reference)


ENGINES = {"loop": (LoopEngine, functional_options("loop")), "vmap": (VmapEngine, functional_options("vmap"))}


@pytest.mark.parametrize("engine_name", sorted(ENGINES))
@pytest.mark.parametrize("first_order", [True, False], ids=["first-order", "second-order"])
@pytest.mark.parametrize("steps", [1, 5])
def test_maml_meta_gradient_equals_learn2learn(net, engine_name, first_order, steps):
    tasks = make_tasks()
    engine_cls, options = ENGINES[engine_name]
    model = FunctionalConv4(net, **options)
    inner = InnerLoop(model, model.param_names)
    result = engine_cls().meta_step(inner, dict(net.named_parameters()), {n: INNER_LR for n in model.param_names},
                                    tasks, steps=steps, first_order=first_order)
    reference = learn2learn_meta_gradient(net, tasks, steps, first_order)
    assert max(g.abs().max().item() for g in reference.values()) > 1e-3  # a real, non-vanishing gradient
    assert max_error(result.grad_sum, reference) < TOLERANCE
    assert result.task_losses.shape == (TASKS,) and result.task_accuracies.shape == (TASKS,)


def test_loop_engine_with_elementary_batch_norm_is_exact_too(net):
    tasks = make_tasks()
    model = FunctionalConv4(net, batch_norm="elementary")
    result = LoopEngine().meta_step(InnerLoop(model, model.param_names), dict(net.named_parameters()),
                                    {n: INNER_LR for n in model.param_names}, tasks, steps=5, first_order=False)
    assert max_error(result.grad_sum, learn2learn_meta_gradient(net, tasks, 5, False)) < TOLERANCE


@pytest.mark.parametrize("engine_name", sorted(ENGINES))
@pytest.mark.parametrize("first_order", [True, False], ids=["first-order", "second-order"])
def test_learned_per_element_rates_equal_learn2learn_metasgd(net, engine_name, first_order):
    tasks = make_tasks(seed=2)
    engine_cls, options = ENGINES[engine_name]
    model = FunctionalConv4(net, **options)
    params = dict(net.named_parameters())
    lrs = {n: torch.full_like(p, INNER_LR).requires_grad_() for n, p in params.items()}
    result = engine_cls().meta_step(InnerLoop(model, model.param_names), params, lrs, tasks, steps=2,
                                    first_order=first_order)
    reference = learn2learn_meta_gradient(net, tasks, 2, first_order, algorithm="metasgd")
    assert max_error(result.grad_sum, reference) < TOLERANCE


@pytest.mark.parametrize("engine_name", sorted(ENGINES))
@pytest.mark.parametrize("first_order", [True, False], ids=["first-order", "second-order"])
def test_anil_meta_gradient_equals_learn2learn_head_only_maml(net, engine_name, first_order):
    tasks = make_tasks(seed=3)
    engine_cls, options = ENGINES[engine_name]
    model = FunctionalConv4(net, **options)
    inner = InnerLoop(model, model.head_names)
    assert inner.head_only
    result = engine_cls().meta_step(inner, dict(net.named_parameters()), {n: INNER_LR for n in model.head_names},
                                    tasks, steps=5, first_order=first_order)
    reference = learn2learn_meta_gradient(net, tasks, 5, first_order, algorithm="anil")
    assert reference["block1.0.weight"].abs().max() > 0  # the body learns through the query path
    assert max_error(result.grad_sum, reference) < TOLERANCE


def test_anil_inner_loop_leaves_the_body_unchanged(net):
    tasks = make_tasks()
    model = FunctionalConv4(net)
    params = {k: v.detach().requires_grad_() for k, v in net.named_parameters()}
    _, snapshots = InnerLoop(model, model.head_names).adapt(
        params, {n: INNER_LR for n in model.head_names}, tasks.support_x[0], tasks.support_y[0],
        steps=5, create_graph=False, record=(0, 1, 5))
    assert sorted(snapshots) == [0, 1, 5]
    for step, fast in snapshots.items():
        for name in model.param_names:
            if name.startswith("head"):
                assert step == 0 or not torch.equal(fast[name], params[name]), f"head {name} did not adapt"
            else:
                assert torch.equal(fast[name], params[name]), f"body {name} changed at inner step {step}"


def test_maml_inner_loop_changes_every_layer(net):
    tasks = make_tasks()
    model = FunctionalConv4(net)
    params = {k: v.detach().requires_grad_() for k, v in net.named_parameters()}
    fast, _ = InnerLoop(model, model.param_names).adapt(params, {n: INNER_LR for n in model.param_names},
                                                        tasks.support_x[0], tasks.support_y[0], steps=1,
                                                        create_graph=False)
    assert all(not torch.equal(fast[n], params[n]) for n in ("block1.0.weight", "block4.1.weight", "head.weight"))


def test_evaluate_is_the_same_for_both_engines(net):
    tasks = make_tasks(seed=4)
    results = []
    for engine_name in ("loop", "vmap"):
        engine_cls, options = ENGINES[engine_name]
        model = FunctionalConv4(net, **options)
        results.append(engine_cls().evaluate(InnerLoop(model, model.param_names), dict(net.named_parameters()),
                                             {n: INNER_LR for n in model.param_names}, tasks, steps=3))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=1e-10)
    torch.testing.assert_close(results[0][1], results[1][1])


def test_elementary_and_native_batch_norm_agree():
    x = torch.randn(7, 4, 5, 5, dtype=torch.float64)
    weight, bias = torch.rand(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    torch.testing.assert_close(batch_norm_elementary(x, weight, bias), batch_norm_native(x, weight, bias))


def test_functional_forward_matches_the_module_with_batch_statistics(net):
    x = torch.randn(10, 1, 16, 16, dtype=torch.float64)
    params = dict(net.named_parameters())
    for norm in ("native", "elementary"):
        for channels_last in (True, False):
            model = FunctionalConv4(net, batch_norm=norm, channels_last=channels_last)
            torch.testing.assert_close(model(params, x), net(x))
    acts = FunctionalConv4(net).activations(params, x)
    assert list(acts) == ["block1", "block2", "block3", "block4", "head"]
    assert acts["block1"].shape == (10, 6 * 8 * 8)


def test_vmap_engine_refuses_native_batch_norm(net):
    model = FunctionalConv4(net, batch_norm="native", channels_last=False)
    with pytest.raises(ValueError, match="elementary"):
        VmapEngine().meta_step(InnerLoop(model, model.param_names), dict(net.named_parameters()),
                               {n: INNER_LR for n in model.param_names}, make_tasks(), steps=1, first_order=False)


def test_bad_inputs_name_the_problem_and_the_fix(net):
    model = FunctionalConv4(net)
    with pytest.raises(KeyError, match='Did you mean "head.weight"'):
        InnerLoop(model, ["head.weigth"])
    with pytest.raises(ValueError, match='Did you mean "vmap"'):
        make_engine("vmapp")
    with pytest.raises(ValueError, match="choose one of"):
        FunctionalConv4(net, batch_norm="fused")
    tasks = make_tasks()
    with pytest.raises(ValueError, match="disagree on the number of tasks"):
        TaskBatch(tasks.support_x, tasks.support_y[:2], tasks.query_x, tasks.query_y)
    with pytest.raises(KeyError, match="lacks"):
        TaskBatch.from_batch({"support_x": tasks.support_x})


def test_auto_engine_is_the_loop_on_cpu():
    assert make_engine("auto", "cpu").name == "loop"
    assert make_engine("auto", "cuda").name == "vmap"


def test_shards_cover_the_batch_once():
    tasks = make_tasks()
    shards = [tasks.shard(rank, 2) for rank in range(2)]
    assert sum(len(s) for s in shards) == len(tasks)
    torch.testing.assert_close(torch.cat([shards[0].support_x[:1], shards[1].support_x[:1],
                                          shards[0].support_x[1:]]), tasks.support_x)


def test_loop_engine_with_two_worker_threads_gives_the_same_meta_gradient(net):
    tasks = make_tasks(seed=5)
    model = FunctionalConv4(net)
    inner = InnerLoop(model, model.param_names)
    args = (inner, dict(net.named_parameters()), {n: INNER_LR for n in model.param_names}, tasks)
    one = LoopEngine(workers=1).meta_step(*args, steps=2, first_order=False)
    two = LoopEngine(workers=2).meta_step(*args, steps=2, first_order=False)
    assert max_error(two.grad_sum, one.grad_sum) < 1e-12
    torch.testing.assert_close(two.task_losses, one.task_losses, rtol=0, atol=0)
    assert max_error(two.grad_sum, learn2learn_meta_gradient(net, tasks, 2, False)) < TOLERANCE


def test_a_used_loop_engine_still_pickles(net):
    import pickle

    engine = LoopEngine(workers=2)
    model = FunctionalConv4(net)
    engine.evaluate(InnerLoop(model, model.param_names), dict(net.named_parameters()),
                    {n: INNER_LR for n in model.param_names}, make_tasks(), steps=1)
    assert engine._pool is not None
    assert pickle.loads(pickle.dumps(engine)).workers == 2
