"""What a floating-point result depends on, for the failure messages of tests that compare numbers.

A test that checks rounding error, thread counts or BLAS behaviour can pass on one CPU and fail on
another (another BLAS kernel sums a dot product in another order). Its assertion message ends with
``machine()``, so a failure seen on someone else's machine names the CPU, the vector extensions
torch uses and the BLAS libraries (with the kernel OpenBLAS picked) without a second run.
"""

from __future__ import annotations

import functools
import os
import platform


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def machine() -> str:
    """One line: CPU model and cores, torch's CPU capability and BLAS, numpy's BLAS libraries and kernels."""
    import numpy as np  # noqa: F401 - loads numpy's BLAS so threadpoolctl can see it
    import torch
    from threadpoolctl import threadpool_info

    torch_blas = "mkl" if torch.backends.mkl.is_available() else "other"
    libraries = [f"{lib.get('internal_api')} {lib.get('version')} ({lib.get('architecture', '?')} kernel, "
                 f"{lib.get('num_threads')} threads)" for lib in threadpool_info() if lib.get("user_api") == "blas"]
    coretype = os.environ.get("OPENBLAS_CORETYPE")
    return (f"[machine: {_cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__} "
            f"{torch.backends.cpu.get_cpu_capability()} with {torch_blas}, {torch.get_num_threads()} threads; "
            f"numpy BLAS {', '.join(libraries) or 'unknown'}"
            f"{f'; OPENBLAS_CORETYPE={coretype}' if coretype else ''}]")
