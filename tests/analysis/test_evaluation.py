"""evaluate (mean loss, top-1 error) and recompute_batchnorm (cumulative BN statistics)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analysis.errors import ConfigError
from analysis.evaluation import batchnorm_layers, default_unpack, evaluate, recompute_batchnorm, top1_errors
from tests.analysis.tiny_models import TinyNet, blob_images, loader


def test_loss_and_error_are_the_example_weighted_means_over_the_whole_loader():
    model = TinyNet(seed=1).eval()
    data = blob_images(40, seed=2)  # 16 + 16 + 8: unequal batches
    loss, error = evaluate(model, loader(40, seed=2, batch_size=16))
    with torch.no_grad():
        logits = model(data.tensors[0])
    assert loss == pytest.approx(float(F.cross_entropy(logits, data.tensors[1])), rel=1e-6)
    assert error == float((logits.argmax(1) != data.tensors[1]).double().mean())


def test_train_flags_are_restored_and_outputs_that_are_not_logits_have_no_error():
    model = TinyNet()
    model.train()
    model.net.block2.eval()
    regression = [(torch.randn(4, 1, 16, 16), torch.randn(4, 4))]
    loss, error = evaluate(model, regression, loss_fn=F.mse_loss)
    assert error is None and loss > 0
    assert model.training and not model.net.block2.training


def test_max_batches_limits_the_pass_and_an_empty_loader_is_refused():
    model = TinyNet()
    first, _ = evaluate(model, loader(32, batch_size=16), max_batches=1)
    only, _ = evaluate(model, loader(16, batch_size=16))
    assert first == only
    with pytest.raises(ConfigError, match="no examples"):
        evaluate(model, [])


def test_batches_are_split_from_tuples_and_dicts():
    x, y = torch.zeros(2, 3), torch.ones(2)
    assert default_unpack((x, y, "extra")) == (x, y)
    assert default_unpack({"image": x, "mask": y}) == (x, y)
    with pytest.raises(ConfigError, match="unpack="):
        default_unpack(x)


def test_top1_errors_counts_wrong_arg_max_only_for_class_logits():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert int(top1_errors(logits, torch.tensor([0, 0, 0]))) == 1
    assert top1_errors(logits, torch.zeros(3, 2)) is None


def test_recomputed_statistics_are_the_plain_average_over_the_batches():
    model = TinyNet(seed=1)
    model.net.block1[1].momentum = 0.3
    model.eval()
    batches = loader(64, seed=6, batch_size=16)
    assert recompute_batchnorm(model, batches, num_batches=2)
    bn = model.net.block1[1]
    per_batch = []
    for x, _ in list(batches)[:2]:
        h = model.net.block1[0](x)
        per_batch.append(h.mean(dim=(0, 2, 3)))
    assert torch.allclose(bn.running_mean, torch.stack(per_batch).mean(0), atol=1e-6)
    assert bn.momentum == 0.3 and not bn.training and not model.training  # momentum and modes restored


def test_a_model_without_batchnorm_is_left_alone_and_an_empty_bn_loader_is_refused():
    plain = nn.Sequential(nn.Linear(3, 2))
    assert batchnorm_layers(plain) == [] and recompute_batchnorm(plain, [(torch.zeros(1, 3), 0)]) is False
    with pytest.raises(ConfigError, match="no batches"):
        recompute_batchnorm(TinyNet(), [])
