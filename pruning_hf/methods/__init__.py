"""Registry of pruning methods. Add a method: one file in this folder + one line in ``METHODS``."""

from __future__ import annotations

from ..utils.checks import shown
from .admm import ADMMPruner
from .base import PruningMethod
from .depth import DepthPruner
from .magnitude import MagnitudePruner
from .sparsegpt import SparseGPTPruner
from .structured import StructuredPruner
from .wanda import WandaPruner

METHODS: dict[str, type[PruningMethod]] = {
    "magnitude": MagnitudePruner,
    "wanda": WandaPruner,
    "sparsegpt": SparseGPTPruner,
    "admm": ADMMPruner,
    "structured": StructuredPruner,
    "depth": DepthPruner,
}


def get_method(name: str) -> type[PruningMethod]:
    """The method class registered under ``name`` (case-insensitive); ValueError listing the choices."""
    key = name.strip().lower() if isinstance(name, str) else None
    if key not in METHODS:
        raise ValueError(f"method={shown(name)} is not a known pruning method; choose one of: {', '.join(METHODS)}")
    return METHODS[key]


def available_methods() -> list[str]:
    return list(METHODS)


def option_owners(option: str) -> list[str]:
    """The registered methods that take ``option`` (for error messages)."""
    return [name for name, method in METHODS.items() if option in method.option_names()]
