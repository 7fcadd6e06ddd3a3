"""Weight importance scores shared by methods and layer allocation."""

from __future__ import annotations

import torch

__all__ = ["wanda_scores"]


def wanda_scores(weight: torch.Tensor, column_norms: torch.Tensor) -> torch.Tensor:
    """``(out, in)`` importance ``|W| * ||X_j||`` from weight ``(out, in)`` and input norms ``(in,)``."""
    return weight.abs().mul_(column_norms.to(weight.device).unsqueeze(0))
