"""The recipe YAML schema: typed sections, expectations, and validation that names the key path.

Helpers here turn a YAML mapping into a section dataclass, rejecting unknown keys and wrong types with a
:class:`RecipeError` that starts with the key path (``evaluation.seq_len: expected an integer ...``);
:class:`~pruning_hf.workflows.recipes.Recipe` adds the file and line.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..utils.checks import shown

__all__ = ["RecipeError", "ModelSection", "HubSection", "Expectation", "Check", "TOP_KEYS", "check_value",
           "mapping", "build_section", "deep_merge", "line_of"]


class RecipeError(ValueError):
    """A recipe file is malformed; the message names the file, line and key path."""


@dataclass
class ModelSection:
    id: str = field(metadata={"help": "Hub id, local checkpoint folder, or embedded:NAME."})
    revision: str | None = field(default=None, metadata={"help": "Hub revision."})
    dtype: str = field(default="auto", metadata={"help": "torch dtype: auto, float32, bfloat16, float16."})
    device_map: str | None = field(default=None, metadata={"help": "accelerate device map, e.g. auto."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the Hub."})

    def hf_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"dtype": self.dtype, "trust_remote_code": self.trust_remote_code}
        if self.revision:
            kwargs["revision"] = self.revision
        if self.device_map:
            kwargs["device_map"] = self.device_map
        return kwargs


@dataclass
class HubSection:
    repo_id: str | None = None
    private: bool = False


@dataclass
class Expectation:
    """An expected value; measured ``m`` passes when ``|m - value| <= max(abs_tol, rel_tol * |value|)``."""

    value: float
    rel_tol: float | None = None
    abs_tol: float | None = None

    def allowed(self) -> float:
        return max(self.abs_tol or 0.0, (self.rel_tol or 0.0) * abs(self.value))

    def describe(self) -> str:
        parts = [f"±{self.rel_tol:.1%}" if self.rel_tol is not None else "",
                 f"±{self.abs_tol:g}" if self.abs_tol is not None else ""]
        return " or ".join(p for p in parts if p)


@dataclass
class Check:
    metric: str
    expected: Expectation
    measured: float | None

    @property
    def passed(self) -> bool:
        return self.measured is not None and math.isfinite(self.measured) and \
            abs(self.measured - self.expected.value) <= self.expected.allowed()


TOP_KEYS = ["name", "description", "model", "pruning", "calibration", "evaluation", "output", "hub", "expected",
             "quick"]


def _type_name(hint) -> str:
    if typing.get_origin(hint) is list:
        item = _type_name(typing.get_args(hint)[0])
        return f"a list of {item.split(' ', 1)[-1]}s"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "a mapping"}.get(
        hint, getattr(hint, "__name__", str(hint)))


def check_value(value: Any, hint, where: str) -> Any:
    """``value`` if it fits the type hint (``X``, ``X | None``), else a message-bearing RecipeError."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    if value is None and type(None) in options:
        return None
    for option in options:
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option in (str, bool, dict) and isinstance(value, option):
            return value
        if typing.get_origin(option) is list and isinstance(value, list):
            (item,) = typing.get_args(option)
            return [check_value(element, item, f"{where}[{i}]") for i, element in enumerate(value)]
    wanted = " or ".join(_type_name(o) if o is not type(None) else "null" for o in options)
    raise RecipeError(f"{where}: expected {wanted}, got {shown(value)} ({type(value).__name__})")


def mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise RecipeError(f"{where}: expected a mapping, got {shown(value)} ({type(value).__name__})")
    return value


def build_section(cls, value: Any, where: str):
    """Build a section dataclass from a YAML mapping, rejecting unknown keys and wrong types."""
    data = mapping(value, where)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise RecipeError(f"{where}.{key}: unknown key; allowed in {where}: {', '.join(names)}")
    for f in dataclasses.fields(cls):
        if f.name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise RecipeError(f"{where}.{f.name}: required key is missing")
    return cls(**{key: check_value(item, hints[key], f"{where}.{key}") for key, item in data.items()})


def deep_merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "expected":
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def line_of(root, dotted: str) -> int | None:
    """1-based line of the YAML node at ``dotted`` (``evaluation.seq_len``), or of its nearest parent."""
    node, line = root, None
    for part in dotted.split("."):
        if not isinstance(node, yaml.MappingNode):
            break
        for key_node, value_node in node.value:
            if key_node.value == part:
                node, line = value_node, key_node.start_mark.line + 1
                break
        else:
            break
    return line
