"""Which accelerator and how many devices a run uses: resolved and checked once, before any training.

``--accelerator auto`` (the default) trains on a GPU when torch sees one and on the CPU otherwise;
``gpu`` (or ``cuda``) without a visible CUDA device, an unknown accelerator name and a ``--devices``
value Lightning would misread are :class:`UserError` paragraphs (problem + fix), not a Lightning
traceback after the data is loaded. Lightning-free, and torch is imported only inside the functions,
so the command line can import this module cheaply.
"""

from __future__ import annotations

import os
import re

from benchmarks.core.errors import UserError, unknown_name

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def gpu_count() -> int:
    """Number of CUDA devices this process can use (honours CUDA_VISIBLE_DEVICES); 0 without CUDA."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _no_cuda_reason() -> str:
    """Why torch sees no CUDA device, as far as this process can tell."""
    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and not visible.strip():
        return 'CUDA_VISIBLE_DEVICES="" hides every GPU from this process'
    if torch.version.cuda is None:
        return f"this torch build ({torch.__version__}) has no CUDA support"
    if visible is not None:
        return f'no CUDA device is usable with CUDA_VISIBLE_DEVICES="{visible}"'
    return "no CUDA device or driver was found on this machine"


def resolve_accelerator(requested: str) -> str:
    """The accelerator a run uses: "cpu", "gpu" or "mps" (Lightning's names), from the user's choice.

    "auto" is "gpu" when torch sees a CUDA device, else "cpu" (never MPS: its missing float64 would
    break the float64 analyses). "gpu"/"cuda" and "mps" must be usable here, else a UserError that
    says why not and what to pass instead.
    """
    import torch

    name = str(requested).strip().lower()
    if name == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return "cpu"
    if name in ("gpu", "cuda"):
        if torch.cuda.is_available():
            return "gpu"
        raise UserError(f'--accelerator {requested} asks for a GPU, but torch sees no CUDA device '
                        f"({_no_cuda_reason()})",
                        "use --accelerator auto (a GPU when there is one, else the CPU) or --accelerator cpu "
                        "(or TSUITE_ACCELERATOR=auto|cpu), or run on a GPU node")
    if name == "mps":
        if torch.backends.mps.is_available():
            return "mps"
        raise UserError(f"--accelerator {requested} asks for Apple's MPS backend, which this torch build or "
                        "machine does not provide",
                        "use --accelerator auto or --accelerator cpu")
    raise unknown_name("--accelerator", str(requested), ACCELERATORS)


def _devices_error(value: str, problem: str, fix: str | None = None) -> UserError:
    return UserError(f'--devices "{value}" {problem}',
                     fix or 'pass a device count (--devices 1, --devices 4), "auto" or -1 (every visible '
                            'device), or GPU indices ("0,1")')


def parse_devices(value: str | int, accelerator: str | None = None) -> int | str:
    """``--devices`` as Lightning's Trainer takes it: a count >= 1 (int), -1 (every device), "auto", or GPU
    indices as a string ("0,1"; a single index keeps its trailing comma, "1,", as Lightning reads it).

    With a resolved ``accelerator`` it also checks that the value fits it: the CPU takes only a count or
    "auto", and a GPU count cannot exceed the visible GPUs. Anything else is a UserError naming the fix.
    """
    text = str(value).strip()
    if text.lower() == "auto":
        return "auto"
    if "," in text:
        parts = [p.strip() for p in text.split(",")]
        if parts[-1] == "" and len(parts) > 1:
            parts = parts[:-1]  # "1," is Lightning's way of writing the one index 1
        if not all(re.fullmatch(r"[0-9]+", p) for p in parts):
            raise _devices_error(text, "is not a list of GPU indices")
        indices = [int(p) for p in parts]
        if len(set(indices)) != len(indices):
            raise _devices_error(text, "names a GPU twice", "list each GPU index once, e.g. --devices 0,1")
        devices: int | str = ",".join(map(str, indices)) + ("," if len(indices) == 1 else "")
    else:
        if not re.fullmatch(r"-?[0-9]+", text):
            raise _devices_error(text, "is not a number of devices")
        devices = int(text)
        if devices == 0 or devices < -1:
            raise _devices_error(text, "is not a number of devices Lightning can use (at least 1, or -1 for all)")
    if accelerator is not None:
        _check_fits(text, devices, accelerator)
    return devices


def _check_fits(text: str, devices: int | str, accelerator: str) -> None:
    """Raise when a parsed ``devices`` value does not fit the resolved accelerator."""
    if accelerator == "cpu":
        if isinstance(devices, str) or devices == -1:
            problem = ("lists GPU indices, but the run is on the CPU" if isinstance(devices, str)
                       else 'means "every device", which Lightning does not accept on the CPU')
            raise _devices_error(text, problem,
                                 "give the CPU a process count (--devices 1, or 2 for 2-process DDP), or use "
                                 "--accelerator gpu on a GPU machine")
        return
    if accelerator == "gpu":
        available = gpu_count()
        wanted = devices if isinstance(devices, int) else 0
        indices = [int(p) for p in devices.split(",") if p] if isinstance(devices, str) else []
        if wanted > available or any(i >= available for i in indices):
            raise _devices_error(text, f"asks for more GPUs than the {available} this process sees",
                                 f"pass at most --devices {available} (or -1 for all), indices below {available},"
                                 " or run on a node with more GPUs")


def describe(accelerator: str) -> str:
    """One line for the run header on what a resolved accelerator is, e.g. "gpu (2 x NVIDIA H100 visible)"."""
    import torch

    if accelerator == "gpu" and torch.cuda.is_available():
        return f"gpu ({torch.cuda.device_count()} x {torch.cuda.get_device_name(0)} visible)"
    if accelerator == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return accelerator
