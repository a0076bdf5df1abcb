"""The transfer study's analysis functions on small conv4 networks (no training)."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.core.errors import UserError
from benchmarks.core.runner import resolve_config
from benchmarks.studies.transfer.analyse import compare_pair, criticality, layer_groups, pairs_of
from benchmarks.studies.transfer.study import TransferStudy
from modules.nets.conv4 import Conv4

CONV4_GROUPS = ["block1", "block2", "block3", "block4", "head"]


def _net(seed: int) -> Conv4:
    torch.manual_seed(seed)
    return Conv4(num_classes=4, hidden=8).eval()


def _loader(seed: int, n: int = 48) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 28, 28, generator=generator)
    y = torch.randint(0, 4, (n,), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=16)


def test_interpolating_a_model_with_itself_is_flat_with_identical_features_and_no_distance():
    net = _net(0)
    state = net.state_dict()
    loader = _loader(1)
    probe = next(iter(loader))[0]
    result = compare_pair(net, state, state, probe, loader, bn_loader=_loader(2), lambdas=5)
    curve = result.interpolation
    assert curve.bn_recomputed and curve.lambdas == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert max(curve.loss) - min(curve.loss) == pytest.approx(0.0, abs=1e-6)
    assert max(curve.error) == min(curve.error)
    assert curve.loss_barrier == pytest.approx(0.0, abs=1e-6) and curve.error_barrier == 0.0
    assert list(result.cka) == CONV4_GROUPS
    assert all(value == pytest.approx(1.0, abs=1e-6) for value in result.cka.values())
    assert result.l2 == {name: 0.0 for name in CONV4_GROUPS + ["total", "buffers"]}


def test_two_different_networks_have_positive_distance_and_a_curve_that_ends_at_each():
    a, b = _net(0), _net(1)
    loader = _loader(3)
    result = compare_pair(a, a.state_dict(), b.state_dict(), next(iter(loader))[0], loader, bn_loader=None,
                          lambdas=3)
    assert result.l2["total"] > result.l2["head"] > 0.0
    assert result.interpolation.bn_recomputed is False
    assert all(0.0 <= v <= 1.0 + 1e-9 for v in result.cka.values())


def test_the_l2_distance_covers_weights_only_and_reports_batchnorm_statistics_apart():
    a = _net(0)
    state_a = a.state_dict()
    state_b = {k: v.clone() for k, v in state_a.items()}
    state_b["block1.1.running_mean"] += 3.0  # only a running statistic differs (8 channels)
    result = compare_pair(a, state_a, state_b, next(iter(_loader(3)))[0], _loader(3), bn_loader=None, lambdas=2)
    assert result.l2["total"] == 0.0
    assert result.l2["buffers"] == pytest.approx(3.0 * 8 ** 0.5)


def test_layer_groups_of_conv4_are_its_blocks_and_head_in_order():
    groups = layer_groups(_net(0))
    assert list(groups) == CONV4_GROUPS
    assert groups["head"] == ["head.weight", "head.bias"]


def test_pairs_compare_every_two_seeds_in_each_of_the_three_kinds():
    members = {"pretrained": {0: "p0", 1: "p1", 2: "p2"}, "random": {0: "r0", 1: "r1", 2: "r2"}}
    pairs = pairs_of(members)
    assert len(pairs) == 9
    assert ("PT-RT", 0, 2, "p0", "r2") in pairs and ("RT-RT", 1, 2, "r1", "r2") in pairs
    assert {kind for kind, *_ in pairs} == {"PT-PT", "PT-RT", "RT-RT"}


def test_a_module_rewound_to_its_own_start_is_not_critical():
    net = _net(0)
    state = net.state_dict()
    options = {"alphas": [0.0, 1.0], "sigma_min": 0.001, "sigma_max": 0.1, "sigma_points": 3, "epsilon": 1.0,
               "bound": "absolute", "search": "bisect", "draws": 1, "criterion": "error", "bn_batches": 1}
    result = criticality(net, state, state, _loader(4), options)
    assert {name: m.criticality for name, m in result.modules.items()} == {name: 0.0 for name in CONV4_GROUPS}
    assert result.bn_recomputed and result.noise == "absolute"


@pytest.mark.parametrize(("override", "message"), [
    ("sources.glyphs.block_sizes=[1, 5, 28]", "divisors of 28"),
    ("sources.glyphs.block_sizes=[1, 2]", "add 28"),
    ("sources.glyphs.block_sizes=7", "is not a list"),
    ("seeds=[0]", "two independent runs"),
    ("seeds=abc", "is not a list"),
    ("seeds=[]", "at least 1"),
    ("seeds=[0, 0]", "repeats a seed"),
    ("analysis.sources=[imagenet]", "use_sources"),
    ("use_sources=[fmnst]", 'Did you mean "fmnist"'),
    ("domain_distance=[glyphs, glyphs]", "names a source twice"),
    ("domain_distance=[imagenet]", "domain_distance"),
    ("sources.glyphs.pretrain.alphabet_split=train", "the target's alphabet split"),
    ("sources.glyphs.pretrain.dataset=mnist", 'Did you mean'),
    ("sources.glyphs.train.lrs=[0.05, 0]", "positive"),
    ("sources.glyphs.train.lrs=0.05", "is not a list"),
    ("analysis.criticality.sigma_max=2.0", "<= 1.0"),
    ("analysis.criticality.bound=relativ", 'Did you mean "relative"'),
    ("analysis.criticality.search=grd", 'Did you mean "grid"'),
    ("threads=auto", "is not a whole number"),
    ("threads=0", "whole number >= 1"),
    ("sources.fmnist.train.epochs=2.5", "is not a whole number"),
    ("sources.fmnist.train.epochs=-3", "whole number >= 1"),
    ("sources.fmnist.train.speed_epochs=9", "<= 2"),
    ("sources.fmnist.train.optim.optimizer=adan", 'Did you mean "adam"'),
    ("target.alphabet_split=tran", 'Did you mean "train"'),
    ("analysis.lambdas=1", ">= 2"),
    ("analysis.criticality.alphas=[0.0, 1.5]", "<= 1.0"),
    ("checkpoints.seeds=[5]", "not seeds of source glyphs"),
])
def test_configs_that_cannot_work_fail_before_any_run_with_the_key_and_the_fix(override, message):
    cfg = resolve_config("transfer", "smoke", [override])
    with pytest.raises(UserError, match=message) as raised:
        TransferStudy().plan(cfg)
    assert override.split("=")[0].split(".")[-1] in str(raised.value) and "Fix:" in str(raised.value)


def test_an_unknown_source_kind_suggests_the_known_ones():
    cfg = resolve_config("transfer", "smoke", ["sources.glyphs.kind=conv5"])
    with pytest.raises(UserError, match='Did you mean "conv4"'):
        TransferStudy().plan(cfg)


def test_the_plan_orders_dependencies_first_and_reuses_the_intact_pt_runs_as_the_last_checkpoint():
    cfg = resolve_config("transfer", "smoke", [])
    plan = TransferStudy().plan(cfg)
    position = {run.key: index for index, run in enumerate(plan)}
    assert all(position[need] < position[run.key] for run in plan for need in run.needs)
    checkpoints = [run for run in plan if run.stage == "checkpoint"]
    assert {run.params["step"] for run in checkpoints} == {0, 2}  # step 4 (the end) is the intact P-T run
    assert len({run.key for run in plan}) == len(plan)


def test_both_arms_run_the_same_learning_rate_grid_and_sources_of_one_architecture_share_their_rt_runs():
    cfg = resolve_config("transfer", "smoke", [])
    train = [run for run in TransferStudy().plan(cfg) if run.stage == "train"]
    rates = {arm: {run.params["lr"] for run in train if run.params["init"] == arm} for arm in ("pretrained", "random")}
    assert rates["pretrained"] == rates["random"] == {0.02, 0.05}
    random = [run for run in train if run.params["init"] == "random"]
    assert {run.params["source"] for run in random} == {"glyphs"}  # R-T never sees a source: one set for both
    assert len(random) == 2 * 2 * 2  # blocks 1 and 28 x two rates x two seeds
    assert all("pretrain" not in run.config["source"] for run in random)
    pretrained = {(run.params["source"], run.params["block"]) for run in train if run.params["init"] == "pretrained"}
    assert pretrained == {("glyphs", 1), ("glyphs", 28), ("fmnist", 28)}


def test_the_analyses_depend_on_every_intact_run_of_the_grid_to_choose_the_rate_at_run_time():
    cfg = resolve_config("transfer", "smoke", [])
    plan = TransferStudy().plan(cfg)
    (pairs,) = [run for run in plan if run.stage == "pairs"]
    assert len(pairs.needs) == 2 * 2 * 2  # two arms x two rates x two seeds, intact
    crit = next(run for run in plan if run.stage == "criticality" and run.params["init"] == "random")
    assert len(crit.needs) == 2 * 2


def test_a_set_of_the_study_seeds_that_a_source_list_shadows_is_an_error(capsys):
    from benchmarks.__main__ import main

    assert main(["transfer", "--profile", "tiny", "--set", "seeds=[0, 1, 2, 3]", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "--set seeds=[0, 1, 2, 3] would be ignored" in err and "sources.imagenet.seeds" in err
    assert main(["transfer", "--profile", "tiny", "--set", "seeds=[0, 1, 2, 3]", "--set",
                 "sources.imagenet.seeds=[0, 1]", "--print-config"]) == 0
