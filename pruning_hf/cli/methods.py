"""``pruning-hf methods``: every registered method, its options, and the options every method shares."""

from __future__ import annotations

import dataclasses

from ..config import PruningConfig
from ..methods import METHODS

__all__ = ["add", "run"]


def add(sub) -> None:
    parser = sub.add_parser("methods", help="list pruning methods and their options")
    parser.set_defaults(func=run)


def run(args) -> int:
    for name, method in METHODS.items():
        doc = (method.__doc__ or "").strip().splitlines()[0]
        allocations = ", ".join(method.allocations)
        print(f"{name}: {doc}\n    allocation: {allocations}; refine: {'yes' if method.refinable else 'no'}")
        for f in dataclasses.fields(method.Options):
            print(f"    --{f.name.replace('_', '-')} (default {f.default!r}): {f.metadata.get('help', '')}")
    print("\noptions of every method:")
    for cli_field in PruningConfig.cli_fields(("config",))[1:]:  # all but --method itself
        print(f"    {cli_field.flag} (default {cli_field.default!r}): {cli_field.help}")
    return 0
