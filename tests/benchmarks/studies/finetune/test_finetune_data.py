"""The study's tasks are what the config says: disjoint source/target images, relabelled as claimed."""

import math

import numpy as np
import pytest
import torch

from benchmarks.core.errors import UserError
from benchmarks.studies.finetune.data import build_task, class_pool, digits_images
from datamodules.label_transforms import expected_agreement

SIZES = {"n_train": 300, "n_val": 50, "n_test": 100}
NORM = (0.3, 0.35)
FIVE = [0, 1, 2, 3, 4]


def task(labels: str, dataset: str = "fashion_mnist", classes=FIVE, seed: int = 0, sizes=SIZES):
    return build_task({"dataset": dataset, "classes": classes, "labels": labels}, sizes, role="target", seed=seed,
                      image_size=28, split_seed=0, norm=NORM)


def labels_of(dataset) -> torch.Tensor:
    return torch.stack([dataset[i][1] for i in range(len(dataset))])


def test_source_and_target_never_share_a_training_image():
    source, _ = class_pool("fashion_mnist", FIVE, "source", "train", image_size=28, split_seed=0)
    target, _ = class_pool("fashion_mnist", FIVE, "target", "train", image_size=28, split_seed=0)
    source_set = {bytes(x) for x in source[:3000]}
    assert not any(bytes(x) in source_set for x in target[:3000])
    assert abs(len(source) - len(target)) < 0.05 * len(source)  # two halves


def test_a_clean_target_has_true_labels_and_the_requested_sizes():
    data = task("clean")
    assert {k: len(v) for k, v in data.datasets.items()} == {"train": 300, "val": 50, "test": 100}
    assert data.label_agreement == 1.0 and data.num_classes == 5
    assert set(labels_of(data.datasets["train"]).tolist()) == set(range(5))


def test_a_permuted_target_disagrees_everywhere_but_consistently_on_every_split():
    clean, permuted = task("clean"), task("permuted")
    assert permuted.label_agreement == 0.0
    for split in ("train", "test"):
        pairs = set(zip(labels_of(clean.datasets[split]).tolist(), labels_of(permuted.datasets[split]).tolist()))
        assert len(pairs) == 5 and all(a != b for a, b in pairs)  # one fixed derangement of the classes


@pytest.mark.parametrize("labels, noise", [("noise-0.25", 0.25), ("noise-0.5", 0.5), ("random", 1.0)])
def test_noisy_targets_corrupt_training_labels_at_their_rate_and_test_on_clean_labels(labels, noise):
    clean, noisy = task("clean", sizes={**SIZES, "n_train": 2000}), task(labels, sizes={**SIZES, "n_train": 2000})
    expected = expected_agreement(noise, 5)
    assert abs(noisy.label_agreement - expected) < 4 * math.sqrt(expected * (1 - expected) / 2000)
    assert torch.equal(labels_of(noisy.datasets["test"]), labels_of(clean.datasets["test"]))
    assert torch.equal(noisy.datasets["train"][0][0], clean.datasets["train"][0][0])  # same images


def test_the_cross_domain_target_is_sklearn_digits_at_the_model_size():
    images, labels = digits_images(28)
    assert images.shape == (1797, 28, 28) and images.dtype == np.uint8 and images.max() > 200
    data = task("clean", dataset="digits", sizes={"n_train": 400, "n_val": 80, "n_test": 400})
    x, _ = data.datasets["train"][0]
    assert x.shape == (1, 28, 28)
    assert set(labels_of(data.datasets["test"]).tolist()) == set(range(5))


def test_asking_for_more_examples_than_exist_names_the_limit():
    with pytest.raises(UserError, match="only .* are available.*Fix"):
        task("clean", dataset="digits", sizes={"n_train": 900, "n_val": 80, "n_test": 10})


def test_the_paper_profile_plans_resnet18_runs_on_full_scale_data():
    from benchmarks.core.runner import resolve_config
    from benchmarks.studies.finetune.study import FinetuneStudy

    cfg = resolve_config("finetune", "paper", [], data_root="/data/elsewhere")
    plan = FinetuneStudy().plan(cfg)
    finetune = [r for r in plan if r.stage == "finetune"]
    assert len(finetune) == len(cfg["seeds"]) * len(cfg["finetune"]["targets"]) * len(cfg["finetune"]["modes"])
    assert all(r.config["model"]["backbone"] == "resnet18" and r.config["data_root"] == "/data/elsewhere"
               for r in plan)
    assert {r.config["target"]["dataset"] for r in finetune} == {"cifar10", "svhn"}


def test_a_missing_full_scale_dataset_names_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        build_task({"dataset": "cifar10", "classes": FIVE, "labels": "clean"}, SIZES, role="target", seed=0,
                   image_size=32, split_seed=0, norm=NORM, data_root=str(tmp_path))
