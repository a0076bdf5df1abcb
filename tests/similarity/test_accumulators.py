"""Streaming linear CKA: any batch split, merged states and 2 DDP processes give the one-shot value."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st

from similarity import LinearCKAAccumulator, SimilarityInputError, linear_cka

N, DX, DY = 96, 12, 7


def paired_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 data with a large offset, so that the streamed sums must cancel it accurately."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, DX, generator=g, dtype=torch.float64) * 2 + 5.0
    y = torch.tanh(x @ torch.randn(DX, DY, generator=g, dtype=torch.float64)) + 0.1 * torch.randn(
        N, DY, generator=g, dtype=torch.float64) - 3.0
    return x, y


def streamed(x: torch.Tensor, y: torch.Tensor, cuts: list[int], debiased: bool) -> float:
    acc = LinearCKAAccumulator(debiased=debiased)
    bounds = [0, *sorted(set(cuts)), len(x)]
    for start, stop in zip(bounds[:-1], bounds[1:]):
        if stop > start:
            acc.update(x[start:stop], y[start:stop])
    return float(acc.compute())


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, N - 1), max_size=10), st.booleans())
def test_any_batch_split_gives_the_one_shot_value(cuts, debiased):
    x, y = paired_data()
    assert abs(streamed(x, y, cuts, debiased) - linear_cka(x, y, debiased=debiased)) < 1e-10


def test_images_are_flattened_and_the_result_is_a_float64_scalar():
    x, y = paired_data()
    acc = LinearCKAAccumulator()
    acc.update(x.reshape(N, 3, 2, 2), y)
    value = acc.compute()
    assert value.dtype == torch.float64 and value.dim() == 0
    assert abs(float(value) - linear_cka(x, y)) < 1e-10


def test_merged_accumulators_equal_one_accumulator_over_all_data():
    x, y = paired_data(1)
    first, second = LinearCKAAccumulator(DX, DY, debiased=True), LinearCKAAccumulator(DX, DY, debiased=True)
    first.update(x[:40], y[:40])
    second.update(x[40:], y[40:])
    first.merge_state(second)
    assert abs(float(first.compute()) - linear_cka(x, y, debiased=True)) < 1e-10


def test_calling_the_metric_gives_each_batch_value_and_keeps_accumulating():
    x, y = paired_data(3)
    acc = LinearCKAAccumulator()  # widths learnt from the first batch
    first = acc(x[:50], y[:50])
    assert abs(float(first) - linear_cka(x[:50], y[:50])) < 1e-10
    acc(x[50:], y[50:])
    assert abs(float(acc.compute()) - linear_cka(x, y)) < 1e-10
    seen_all, seen_nothing = LinearCKAAccumulator(), LinearCKAAccumulator()
    seen_all.update(x, y)
    seen_all.merge_state(seen_nothing)  # a rank that saw no batch (widths still unknown) adds nothing
    assert abs(float(seen_all.compute()) - linear_cka(x, y)) < 1e-10


def test_reset_forgets_everything_and_widths_must_stay_the_same():
    x, y = paired_data()
    acc = LinearCKAAccumulator()
    acc.update(torch.zeros(5, 3), torch.zeros(5, 2))
    acc.reset()
    acc.update(x, y)
    assert abs(float(acc.compute()) - linear_cka(x, y)) < 1e-10
    with pytest.raises(SimilarityInputError, match="widths.*reset"):
        acc.update(x[:, :5], y)
    with pytest.raises(SimilarityInputError, match="at least 4"):
        small = LinearCKAAccumulator(debiased=True)
        small.update(x[:3], y[:3])
        small.compute()


def _ddp_rank(rank: int, world: int, init_file: str, x: torch.Tensor, y: torch.Tensor, out_dir: str) -> None:
    """One DDP process: accumulate its half of the examples, then compute (torchmetrics syncs the sums)."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        results = []
        for debiased in (False, True):
            acc = LinearCKAAccumulator(DX, DY, debiased=debiased)
            half = slice(rank * N // world, (rank + 1) * N // world)
            for xb, yb in zip(x[half].split(10), y[half].split(10)):
                acc.update(xb, yb)
            results.append(acc.compute())
        torch.save(torch.stack(results), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_two_gloo_processes_each_with_half_the_data_give_the_single_process_value(tmp_path):
    x, y = paired_data(2)
    mp.spawn(_ddp_rank, args=(2, str(tmp_path / "rendezvous"), x, y, str(tmp_path)), nprocs=2, join=True)
    expected = torch.tensor([linear_cka(x, y), linear_cka(x, y, debiased=True)], dtype=torch.float64)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.allclose(got, expected, rtol=0, atol=1e-10), (rank, got, expected)
