"""Config dataclasses to and from plain dicts and YAML, for any of :mod:`audio_ssl.config`'s
trees: strict (an unknown key or a value of the wrong type is an error naming its path), and
checked for counts that must be at least 1. No config class is named here: the trees and their
presets live in :mod:`audio_ssl.config`, which re-exports :func:`to_dict`, :func:`merge` and
:func:`dump`.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml


def to_dict(cfg: Any) -> Any:
    """Dataclass -> plain nested dict of builtins (tuples become lists)."""
    if is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in fields(cfg)}
    if isinstance(cfg, (tuple, list)):
        return [to_dict(v) for v in cfg]
    return cfg


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = get_origin(hint)
    if is_dataclass(hint):
        if not isinstance(value, dict):
            raise ValueError(f"config {where}: expected a mapping, got {value!r}")
        return merge(hint(), value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config {where}: expected a list, got {value!r}")
        args = get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ValueError(f"config {where}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is Literal:
        options = get_args(hint)
        if value not in options and str(value) not in options:
            raise ValueError(f"config {where}: expected one of {list(options)}, got {value!r}")
        return value if value in options else str(value)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if hint in (int, float, bool, str) and not isinstance(value, hint):
        raise ValueError(f"config {where}: expected {hint.__name__}, got {value!r}")
    return value


def merge(cfg: Any, overrides: dict[str, Any], where: str = "") -> Any:
    """Return ``cfg`` with ``overrides`` (a nested dict) applied; unknown keys are an error."""
    hints = get_type_hints(type(cfg))
    known = {f.name for f in fields(cfg)}
    changes = {}
    for key, value in overrides.items():
        path = f"{where}.{key}" if where else key
        if key not in known:
            raise ValueError(f"config: unknown key {path!r}; expected one of {sorted(known)}")
        current = getattr(cfg, key)
        if is_dataclass(current) and isinstance(value, dict):
            changes[key] = merge(current, value, path)
        else:
            changes[key] = _coerce(value, hints[key], path)
    return replace(cfg, **changes)


def overlay(cfg: Any, yaml_path: str | Path | None, overrides: dict[str, Any] | None) -> Any:
    """``cfg`` with a YAML file of overrides, then a dict of overrides, applied."""
    if yaml_path is not None:
        path = Path(yaml_path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = getattr(err, "problem", None) or "malformed"
            raise ValueError(f"config file {path}: not valid YAML{where}: {problem}") from None
        if not isinstance(data, dict):
            raise ValueError(f"config file {path}: expected a mapping at the top level")
        cfg = merge(cfg, data)
    if overrides:
        cfg = merge(cfg, overrides)
    check_counts(cfg)
    check_short_clips(cfg)
    return cfg


# counts that must be at least 1 (0 or less would train forever, never log, or divide by zero)
AT_LEAST_ONE = {
    "train": ("max_steps", "checkpoint_every", "log_every", "val_every", "devices", "num_nodes",
              "accumulate_grad_batches"),
    "data": ("max_batch_samples", "max_crop_samples", "max_samples", "num_buckets",
             "batch_multiple"),
}


FLAGS = {"max_steps": " (--max-steps)", "devices": " (--devices)", "num_nodes": " (--num-nodes)"}


def check_counts(cfg: Any) -> None:
    """Raise for a count of :data:`AT_LEAST_ONE` below 1, naming it (and its flag)."""
    for section, names in AT_LEAST_ONE.items():
        part = getattr(cfg, section, None)
        for name in names:
            value = getattr(part, name, None)
            if value is not None and value < 1:
                raise ValueError(f"{section}.{name}{FLAGS.get(name, '')} is {value}: expected "
                                 "at least 1")


def check_short_clips(cfg: Any) -> None:
    """Raise where ``data.pad_min_samples`` would keep nothing more than ``data.min_samples``."""
    data = getattr(cfg, "data", None)
    pad, floor = getattr(data, "pad_min_samples", 0), getattr(data, "min_samples", 0)
    if pad < 0 or (pad > 0 and pad >= floor):
        raise ValueError(f"data.pad_min_samples is {pad}: expected 0 (skip files shorter than "
                         f"data.min_samples = {floor}) or 1 to {floor - 1} (keep them whole, "
                         "padded)")


def dump(cfg: Any, path: str | Path) -> None:
    """Write ``cfg`` as YAML (the form :func:`overlay` reads back)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


__all__ = ["to_dict", "merge", "overlay", "check_counts", "check_short_clips", "dump",
           "AT_LEAST_ONE"]
