"""Validation helpers: a bad value raises a ValueError that names it and says what is allowed.

Errors show values through :func:`shown`, which bounds their length, so a huge or deeply nested
value (a 10**6-element list) costs microseconds to report, not minutes; :func:`safe_yaml_load` refuses
YAML anchors and aliases, so a few bytes of a downloaded config or recipe cannot expand into a huge one.
"""

from __future__ import annotations

import math
import reprlib
from typing import Any, Iterable

import torch
import yaml

__all__ = ["shown", "plain_scalar", "check_choice", "check_number", "check_int", "check_str", "name_list", "reject_unknown",
           "safe_yaml_load", "YamlAnchorError", "all_finite"]

_REPR = reprlib.Repr()
_REPR.maxstring = 80
_REPR.maxother = 80
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6
_REPR.maxlevel = 3


def shown(value: Any) -> str:
    """``repr(value)``, shortened to about 100 characters for error messages."""
    return _REPR.repr(value)


def check_choice(name: str, value: Any, allowed: Iterable[str]) -> str:
    """``value`` if it is one of ``allowed``, else a ValueError naming both."""
    allowed = tuple(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name}={shown(value)} is not allowed; choose one of: {', '.join(allowed)}")
    return value


def _scalar(value: Any) -> int | float | None:
    """``value`` as a Python int / float: Python, numpy and torch real scalars; ``None`` otherwise (bools too)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    shape = getattr(value, "shape", None)
    if callable(getattr(value, "item", None)) and shape is not None and tuple(shape) == ():
        item = value.item()
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            return item
    return None


def plain_scalar(value: Any) -> Any:
    """A numpy / torch real scalar (or 0-d array) as the Python int / float it holds; anything else unchanged."""
    number = _scalar(value)
    return value if number is None else number


def check_number(name: str, value: Any, low: float, high: float, *, high_inclusive: bool = False,
                 low_inclusive: bool = True) -> float:
    """Return ``value`` as float if it is a real number in the interval, else raise a ValueError naming it.

    numpy and torch scalars are accepted (``np.float32(0.5)``, ``torch.tensor(0.5)``).
    """
    interval = f"{'[' if low_inclusive else '('}{low}, {high}{']' if high_inclusive else ')'}"
    number = _scalar(value)
    if number is None or math.isnan(number):
        raise ValueError(f"{name} must be a number in {interval}, got {shown(value)} ({type(value).__name__})")
    above = number >= low if low_inclusive else number > low
    below = number <= high if high_inclusive else number < high
    if not (above and below):
        raise ValueError(f"{name} must be in {interval}, got {shown(value)}")
    return float(number)


def check_int(name: str, value: Any, minimum: int) -> int:
    """Return ``value`` if it is an integer >= minimum (numpy / torch integer scalars too), else raise."""
    number = _scalar(value)
    if not isinstance(number, int):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {shown(value)} ({type(value).__name__})")
    if number < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {number}")
    return number


def check_str(name: str, value: Any) -> str:
    """``value`` if it is a non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {shown(value)}")
    return value


def name_list(name: str, value: Any) -> list[str] | None:
    """A list of non-empty strings from a string, list or tuple (``None`` stays ``None``)."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ValueError(f"{name} must be a list of module-name patterns, got {shown(value)}")
    return [check_str(f"{name}[{i}]", item) for i, item in enumerate(items)]


def reject_unknown(where: str, given: Iterable[str], allowed: Iterable[str]) -> None:
    """Raise a ValueError listing the keys of ``given`` that are not ``allowed`` (``where``: what a key is, e.g.
    ``"calibration key"``)."""
    allowed = list(allowed)
    unknown = sorted(set(given) - set(allowed), key=str)
    if unknown:
        raise ValueError(f"unknown {where}(s) {shown(unknown)}; allowed: {sorted(allowed)}")


class YamlAnchorError(ValueError):
    """A YAML document uses anchors (``&name``) or aliases (``*name``); ``line`` is 1-based."""

    def __init__(self, line: int, name: str) -> None:
        super().__init__(f"YAML anchors and aliases are not allowed ({name} at line {line}): they let a few "
                         "bytes expand into a huge document; write the values out")
        self.line, self.name = line, name


def safe_yaml_load(text: str) -> Any:
    """``yaml.safe_load`` that first refuses anchors and aliases (a 'billion laughs' alias bomb parses fast but
    expands to a value nothing downstream can handle). Raises YamlAnchorError, or yaml.YAMLError on bad YAML."""
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            prefix = "*" if isinstance(event, yaml.AliasEvent) else "&"
            raise YamlAnchorError(event.start_mark.line + 1, prefix + anchor)
    return yaml.safe_load(text)


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` holds no NaN/Inf. NaN and Inf propagate into a float32 sum, so one reduction
    answers for the common finite case (about 10x cheaper on CPU than an elementwise mask); only a sum that
    is not finite (non-finite items, or a float32 overflow) is checked item by item."""
    return bool(torch.isfinite(tensor.sum(dtype=torch.float32))) or bool(torch.isfinite(tensor).all())
