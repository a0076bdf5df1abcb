"""GPU tests: exact float32 on CUDA while they run (TF32 off), restored afterwards; the CPU MAML tests' network.

TF32 rounds matmul and convolution inputs to 10 mantissa bits (5e-4 relative): with it on, float32
results on an Ampere-or-newer GPU differ from the CPU's far beyond float32 rounding, and the tolerances
of these tests (stated in each module, derived from float32's 2^-24) would not hold.
"""

from __future__ import annotations

import pytest
import torch

from tests.modules.test_maml_engines import net  # noqa: F401  (the CPU MAML tests' float64 Conv4 fixture)


@pytest.fixture(autouse=True)
def exact_float32():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
