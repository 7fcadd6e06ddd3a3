"""Command-line flags derived from dataclass fields (name, type hint, default, ``metadata={"help": ...}``), as
peft and transformers' HfArgumentParser do: the config dataclasses stay the one place their fields are written."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

__all__ = ["CliField", "dataclass_cli_fields", "merged_field", "flag_words"]


@dataclass(frozen=True)
class CliField:
    """One command-line flag derived from a config field.

    ``path``: where the value goes (``("sparsity",)``, ``("calibration", "seq_len")``, ``("options", "dampening")``);
    ``kind``: ``float``, ``int``, ``str``, ``list`` (comma-separated), ``switch`` (a flag that sets
    True) or ``bool`` (takes true / false).
    """

    flag: str
    path: tuple[str, ...]
    kind: str
    help: str
    default: Any


def _kind(hint: Any, default: Any, switch: bool) -> str:
    options = [h for h in typing.get_args(hint) if h is not type(None)] or [hint]
    base = options[0]
    if typing.get_origin(base) is list:
        return "list"
    if base is bool:
        return "switch" if switch and default is False else "bool"
    return {float: "float", int: "int"}.get(base, "str")


def dataclass_cli_fields(cls, prefix: tuple[str, ...], switches: bool, skip: tuple[str, ...] = ()) -> list[CliField]:
    """A :class:`CliField` per field of dataclass ``cls`` (except ``skip``), its value going to ``prefix + name``;
    ``switches``: booleans defaulting to False become flags that set True."""
    hints = typing.get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        flag = f.metadata.get("flag") or f"--{f.name.replace('_', '-')}"
        found.append(CliField(flag, (*prefix, f.name), _kind(hints[f.name], default, switches),
                              f.metadata.get("help", ""), default))
    return found


def merged_field(entries: list[tuple[str, CliField]]) -> CliField:
    """One flag for an option several methods take with their own meaning or default: each method's help
    and default, in turn (the flag itself has no default: a method not given it keeps its own)."""
    parts = [f"{name}: {f.help}" + ("" if f.default in (None, False, []) else f" (default: {f.default})")
             for name, f in entries]
    return dataclasses.replace(entries[0][1], help=" | ".join(parts), default=None)


def flag_words(cli_field: CliField, value: Any) -> list[str]:
    """The command-line words that set ``cli_field`` to ``value`` (none for an unset value or a false switch)."""
    if cli_field.kind == "switch":
        return [cli_field.flag] if value else []
    if value is None:
        return []
    if cli_field.kind == "list":
        return [cli_field.flag, ",".join(value)]
    if cli_field.kind == "bool":
        return [cli_field.flag, "true" if value else "false"]
    return [cli_field.flag, str(value)]
