"""The fixed probe set: the same examples, chosen once by seed, for every snapshot of a run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from callbacks.errors import CallbackConfigError


@dataclass(frozen=True)
class Probe:
    """Probe inputs (stacked, on CPU) and the indices they were taken from in their source."""

    inputs: torch.Tensor
    indices: list[int]
    seed: int

    def __len__(self) -> int:
        return len(self.indices)


def _input_of(item: Any, input_key: int | str) -> torch.Tensor:
    if isinstance(item, torch.Tensor):
        return item
    try:
        x = item[input_key]
    except (KeyError, IndexError, TypeError) as err:
        raise CallbackConfigError(f"cannot take input {input_key!r} from a dataset item of type "
                                  f"{type(item).__name__}",
                                  "set input_key to the position (tuple) or key (dict) of the input") from err
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    return x


def select_probe(source: torch.Tensor | Dataset | DataLoader, size: int, seed: int = 0,
                 input_key: int | str = 0) -> Probe:
    """Pick ``size`` examples of ``source`` (a tensor of inputs, a dataset or a loader's dataset) by seed.

    Indices are drawn without replacement with a private generator, then sorted, so the probe depends on
    nothing but (source, size, seed). All examples are used when the source is smaller than ``size``.
    """
    if size < 1:
        raise CallbackConfigError(f"probe_size must be at least 1, got {size}", "pass probe_size >= 1")
    if isinstance(source, DataLoader):
        source = source.dataset
    try:
        n = len(source)  # type: ignore[arg-type]
    except TypeError as err:
        raise CallbackConfigError(f"the probe source ({type(source).__name__}) has no length",
                                  "pass a tensor of inputs, a map-style Dataset or a DataLoader over one"
                                  ) from err
    if n == 0:
        raise CallbackConfigError("the probe source is empty", "pass a dataset or tensor with examples")
    generator = torch.Generator().manual_seed(seed)
    indices = sorted(torch.randperm(n, generator=generator)[: min(size, n)].tolist())
    if isinstance(source, torch.Tensor):
        inputs = source[indices]
    else:
        inputs = torch.stack([_input_of(source[i], input_key) for i in indices])
    return Probe(inputs=inputs.detach().cpu(), indices=indices, seed=seed)
