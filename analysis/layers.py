"""Which layers a callback watches: names or glob patterns over ``named_modules()``.

A module of the suite names its interesting layers with ``default_watch_layers() -> list[str]`` or an
attribute ``watch_layers``; callbacks use that when no explicit list is given.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from torch import nn

from analysis.errors import ConfigError, did_you_mean

_GLOB_CHARS = set("*?[")


def default_layers(module: nn.Module) -> list[str] | None:
    """The module's own choice of layers to watch, or None if it names none."""
    chooser = getattr(module, "default_watch_layers", None)
    if callable(chooser):
        return list(chooser())
    names = getattr(module, "watch_layers", None)
    return list(names) if names is not None else None


def resolve_layers(module: nn.Module, layers: Sequence[str] | str | None = None) -> list[str]:
    """Expand names/globs to existing submodule names, in the order given (globs in module order).

    ``layers=None`` asks the module (``default_watch_layers()`` / ``watch_layers``).
    """
    if layers is None:
        layers = default_layers(module)
        if layers is None:
            raise ConfigError(
                f"{type(module).__name__} names no layers to watch",
                "pass layers=[...] (names or globs from named_modules()) or define "
                "default_watch_layers() -> list[str] or an attribute watch_layers on the module")
    if isinstance(layers, str):
        layers = [layers]
    available = [name for name, _ in module.named_modules() if name]
    known = set(available)
    resolved: list[str] = []
    for pattern in layers:
        if _GLOB_CHARS & set(pattern):
            matches = [name for name in available if fnmatch.fnmatchcase(name, pattern)]
            if not matches:
                raise ConfigError(
                    f'layer pattern "{pattern}" matches no submodule of {type(module).__name__}',
                    f"use names from named_modules(), e.g. {', '.join(available[:6])}")
        elif pattern in known:
            matches = [pattern]
        else:
            raise ConfigError(
                f'no layer "{pattern}" in {type(module).__name__}.{did_you_mean(pattern, available)}',
                f"use names from named_modules(), e.g. {', '.join(available[:6])}")
        resolved += [m for m in matches if m not in resolved]
    if not resolved:
        raise ConfigError("the list of layers to watch is empty", "name at least one layer")
    return resolved


def parameter_groups(module: nn.Module, names: Sequence[str]) -> dict[str, list[str]]:
    """Map each submodule name to the state-dict keys of its parameters (``name.``-prefixed)."""
    param_names = [n for n, _ in module.named_parameters()]
    groups: dict[str, list[str]] = {}
    for name in names:
        keys = [p for p in param_names if p.startswith(name + ".")]
        if not keys:
            raise ConfigError(f'module "{name}" has no parameters',
                              "choose modules that own weights (e.g. blocks, not activations)")
        groups[name] = keys
    return groups
