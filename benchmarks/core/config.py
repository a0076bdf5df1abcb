"""Profiles (YAML per study and profile) and command-line overrides (``--set a.b=value``).

A profile is a nested mapping. Overrides may only change keys that exist (typos are errors with a
"did you mean"); values are parsed as YAML scalars/lists, so ``--set train.lr=0.1`` gives a float.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from benchmarks.core.errors import UserError, did_you_mean

CONFIG_DIR = Path(__file__).parent.parent / "configs"


def available_profiles(study: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / study).glob("*.yaml"))


def load_yaml(path: Path) -> dict:
    """Read a YAML mapping, turning syntax errors into a UserError that names the file and line."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"malformed config {path}{where}: {getattr(err, 'problem', err)}",
                        "correct the YAML syntax there (indentation, 'key: value', quotes)") from None
    if not isinstance(data, dict):
        raise UserError(f"config {path} is not a mapping of keys to values",
                        "write it as 'key: value' lines (see the tiny profile of the same study)")
    return data


def load_profile(study: str, profile: str) -> dict:
    path = CONFIG_DIR / study / f"{profile}.yaml"
    if not path.exists():
        choices = available_profiles(study)
        raise UserError(f'no profile "{profile}" for study "{study}" (looked for {path}).'
                        f"{did_you_mean(profile, choices)}",
                        f"use --profile with one of: {', '.join(choices) or '(none)'}")
    return load_yaml(path)


def flatten(cfg: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    """Return a copy of ``cfg`` with ``key.path=value`` overrides applied; unknown keys are errors."""
    cfg = copy.deepcopy(cfg)
    known = flatten(cfg)
    for item in overrides:
        if "=" not in item:
            raise UserError(f'override "{item}" has no "="', 'write overrides as --set key.path=value')
        key, raw = item.split("=", 1)
        key = key.strip()
        node_keys = {k for flat in known for k in _prefixes(flat)}
        if key not in known and key not in node_keys:
            raise UserError(f'unknown config key "{key}".{did_you_mean(key, known)}',
                            "run with --print-config to see every key of this profile")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = value
    return cfg


def _prefixes(flat_key: str) -> list[str]:
    parts = flat_key.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def dump(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)


# ---------------------------------------------------------------------------------------- typed checks
# Every study validates its config once, when the plan is made, with these: each names the dotted key,
# the bad value and the fix, and returns the value in its proper type (no silent int() truncation).
_MISSING = object()


def lookup(cfg: dict, key: str, default: Any = _MISSING) -> Any:
    """cfg["a"]["b"] for key "a.b"; a missing key is a UserError (or ``default`` when given)."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is not _MISSING:
                return default
            raise UserError(f'the config has no "{key}" entry',
                            "start from the study's tiny profile (--print-config shows every key)")
        node = node[part]
    return node


def _bad(key: str, value: Any, wanted: str, fix: str | None = None) -> UserError:
    return UserError(f"{key}={value!r} is not {wanted}", fix or f"set --set {key}=<{wanted}>")


def _range(key: str, value: float, minimum: float | None, maximum: float | None, wanted: str) -> None:
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = " and ".join(s for s in (f">= {minimum}" if minimum is not None else "",
                                          f"<= {maximum}" if maximum is not None else "") if s)
        raise _bad(key, value, f"{wanted} {bounds}", f"use a value {bounds}")


def as_int(key: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer: 3 or 3.0 pass, 2.5, "abc" and booleans are errors naming the key."""
    if isinstance(value, bool) or not isinstance(value, int | float) or (isinstance(value, float)
                                                                          and not value.is_integer()):
        raise _bad(key, value, "a whole number", f"write a whole number, e.g. --set {key}=3")
    value = int(value)
    _range(key, value, minimum, maximum, "a whole number")
    return value


def as_float(key: str, value: Any, minimum: float | None = None, maximum: float | None = None,
             positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(key, value, "a number", f"write a number, e.g. --set {key}=0.1")
    value = float(value)
    if positive and not value > 0:
        raise _bad(key, value, "a positive number", f"use a value > 0 for {key}")
    _range(key, value, minimum, maximum, "a number")
    return value


def as_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _bad(key, value, "true or false", f"write --set {key}=true or {key}=false")
    return value


def as_choice(key: str, value: Any, choices: Iterable[str]) -> str:
    choices = list(choices)
    if not isinstance(value, str) or value not in choices:
        raise UserError(f"{key}={value!r} is not one of {', '.join(choices)}.{did_you_mean(str(value), choices)}",
                        f"use one of: {', '.join(choices)}")
    return value


def as_list(key: str, value: Any, item: Callable[[str, Any], Any], min_length: int = 1) -> list:
    """A list whose items each pass ``item(key, value)``; a scalar where a list belongs is an error."""
    if not isinstance(value, list | tuple):
        example = f"[{value}]" if isinstance(value, int | float) and not isinstance(value, bool) else "[0, 1, 2]"
        raise _bad(key, value, "a list", f"write a list in brackets, e.g. --set {key}={example}")
    if len(value) < min_length:
        raise UserError(f"{key}={list(value)!r} needs at least {min_length} item(s)",
                        f"give {key} at least {min_length} value(s)")
    return [item(f"{key}[{i}]", v) for i, v in enumerate(value)]


def seeds(cfg: dict, key: str = "seeds") -> list[int]:
    """The run seeds: a non-empty list of distinct whole numbers >= 0."""
    values = as_list(key, lookup(cfg, key), lambda k, v: as_int(k, v, minimum=0))
    if len(set(values)) != len(values):
        raise UserError(f"{key}={values} repeats a seed", "list each seed once: seeds are independent runs")
    return values


def check(cfg: dict, key: str, kind: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``kind(key, lookup(cfg, key), ...)``: e.g. check(cfg, "train.epochs", as_int, minimum=1)."""
    return kind(key, lookup(cfg, key), *args, **kwargs)


def check_not_shadowed(overrides: list[str], shadows: dict[str, list[str]]) -> None:
    """A ``--set key=value`` whose key a more specific config entry overrides would be silently ignored:
    an error naming both keys, unless the user also set every shadowing key."""
    given = dict(item.split("=", 1) for item in overrides if "=" in item)
    given = {k.strip(): v for k, v in given.items()}
    for key, value in given.items():
        hidden_by = [k for k in shadows.get(key, []) if k not in given]
        if hidden_by:
            raise UserError(f"--set {key}={value} would be ignored: {', '.join(hidden_by)} override(s) it for that "
                            "part of the plan",
                            f"set {' and '.join(f'--set {k}=...' for k in hidden_by)} instead (or as well)")
