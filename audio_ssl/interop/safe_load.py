"""Read a ``torch.save`` file without running code from it and without the libraries that wrote it.

fairseq checkpoints pickle objects of classes from fairseq (meters, dictionaries), omegaconf
(``DictConfig``) and argparse (``Namespace``); ``torch.load(weights_only=True)`` refuses them and
``weights_only=False`` needs fairseq installed and would run whatever the file names. Here every
global the file names resolves either to something on torch's own weights-only allowlist
(tensor rebuilders, ``OrderedDict``...), to ``argparse.Namespace``, or to an inert stand-in
(:class:`Opaque`) that only records its arguments and state. Nothing from the file is called.
:func:`to_plain` turns the result (omegaconf containers, namespaces, enums) into plain Python.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path
from typing import Any

import torch


def _allowed_globals() -> dict[str, Any]:
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed = dict(_get_allowed_globals())
    except ImportError:  # pragma: no cover - private API moved; keep the essentials
        import collections

        from torch import _utils

        allowed = {f"torch._utils.{n}": getattr(_utils, n) for n in
                   ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter",
                    "_rebuild_parameter_with_state")}
        allowed["collections.OrderedDict"] = collections.OrderedDict
        allowed["torch.Size"] = torch.Size
    allowed["argparse.Namespace"] = argparse.Namespace
    return allowed


class Opaque:
    """Stand-in for an object of a class we do not import: keeps constructor args and state."""

    _module = "?"
    _name = "?"

    def __new__(cls, *args, **kwargs):  # NEWOBJ calls __new__ only, REDUCE calls the class
        obj = super().__new__(cls)
        obj.args, obj.kwargs = args, kwargs
        obj.state, obj.items, obj.elements = None, {}, []
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key, value) -> None:  # dict subclasses pickle their items
        self.items[key] = value

    def append(self, value) -> None:  # list subclasses pickle their elements
        self.elements.append(value)

    def extend(self, values) -> None:
        self.elements.extend(values)

    @property
    def qualified_name(self) -> str:
        return f"{self._module}.{self._name}"

    def __repr__(self) -> str:
        return f"<stand-in {self.qualified_name}>"


_STAND_INS: dict[tuple[str, str], type] = {}


def _stand_in(module: str, name: str) -> type:
    key = (module, name)
    if key not in _STAND_INS:
        _STAND_INS[key] = type(name, (Opaque,), {"_module": module, "_name": name})
    return _STAND_INS[key]


_ALLOWED: dict[str, Any] | None = None


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        global _ALLOWED
        if _ALLOWED is None:
            _ALLOWED = _allowed_globals()
        found = _ALLOWED.get(f"{module}.{name}")
        if found is not None:
            return found
        if module == "copyreg" and name == "_reconstructor":
            return _reconstructor
        return _stand_in(module, name)


def _reconstructor(cls, base, state):
    """copyreg._reconstructor for protocol 0/1 pickles: only ever builds stand-ins."""
    obj = cls() if isinstance(cls, type) and issubclass(cls, Opaque) else _stand_in("?", "?")()
    if state is not None:
        obj.__setstate__(state)
    return obj


class _PickleModule:
    """The ``pickle_module`` argument of ``torch.load``: restricted Unpickler and load."""

    Unpickler = RestrictedUnpickler

    @staticmethod
    def load(file, **kwargs):
        return RestrictedUnpickler(file, **kwargs).load()


def safe_torch_load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` of ``path`` with every non-allowlisted global replaced by a stand-in."""
    return torch.load(path, map_location=map_location, weights_only=False,
                      pickle_module=_PickleModule)


def to_plain(obj: Any) -> Any:
    """Namespaces, omegaconf containers, enums and dict/list stand-ins -> dicts, lists, values."""
    if isinstance(obj, argparse.Namespace):
        return {k: to_plain(v) for k, v in vars(obj).items()}
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj) if isinstance(obj, list) else tuple(
            to_plain(v) for v in obj)
    if isinstance(obj, Opaque):
        state = obj.state
        if isinstance(state, dict):
            if "_content" in state:  # omegaconf DictConfig / ListConfig
                return to_plain(state["_content"])
            if "_val" in state:  # omegaconf value node
                return to_plain(state["_val"])
            if obj.items or not state:
                return to_plain({**state, **obj.items})
            return to_plain(state)
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            return to_plain(state[1])  # (dict state, slot state)
        if obj.items:
            return to_plain(obj.items)
        if obj.elements:
            return [to_plain(v) for v in obj.elements]
        if len(obj.args) == 1 and not obj.kwargs:  # an enum member: Enum(value)
            return to_plain(obj.args[0])
        return obj
    return obj
