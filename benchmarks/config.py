"""Profiles (YAML per study and profile) and command-line overrides (``--set a.b=value``).

A profile is a nested mapping. Overrides may only change keys that exist (typos are errors with a
"did you mean"); values are parsed as YAML scalars/lists, so ``--set train.lr=0.1`` gives a float.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from benchmarks.errors import UserError, did_you_mean

CONFIG_DIR = Path(__file__).parent / "configs"


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
