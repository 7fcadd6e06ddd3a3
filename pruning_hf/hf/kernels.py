"""Real speed from 2:4 sparsity: swap 2:4-pruned Linear weights to PyTorch's semi-structured sparse tensors.

Zeros in a dense weight cost as much as any other value. A 2:4 weight (at most 2 non-zeros in every
4 consecutive input columns) stored as ``torch.sparse.SparseSemiStructuredTensor`` runs on the
sparse tensor cores of NVIDIA GPUs with compute capability 8.0 or newer (Ampere, Ada, Hopper)
through cuSPARSELt, or CUTLASS where cuSPARSELt is missing. Published and measured gains are
about 1.1-1.4x on large linear layers at prefill / large batch, and none or a slowdown at batch 1
decode (see benchmarks/sparse_kernels.py).

:func:`enable_2to4_kernels` does the swap where it can and otherwise leaves the model exactly as it
was, saying why (no CUDA GPU, an older GPU, a weight that is not 2:4, a dtype or shape the kernels
do not take). The swap is for inference: the model keeps working with ``generate()``, but the
swapped weights cannot be saved with ``save_pretrained`` (save before, or reload the checkpoint).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from ..sparsity.masks import check_nm

__all__ = ["KernelReport", "is_2to4_sparse", "semi_structured_support", "semi_structured_candidates",
           "enable_2to4_kernels"]

KERNEL_DTYPES = (torch.float16, torch.bfloat16)
#: smallest (rows, columns) multiple the fp16/bf16 kernels take: CUTLASS (32, 64) covers cuSPARSELt (16, 16)
MIN_BLOCK = (32, 64)


@dataclass
class KernelReport:
    """What :func:`enable_2to4_kernels` did.

    Attributes:
        swapped: Linear modules whose weight is now a semi-structured sparse tensor.
        skipped: Linear modules left dense, with the reason.
        unavailable: why no module was swapped at all (no suitable GPU), else ``None``.
        backend: ``"cusparselt"`` or ``"cutlass"`` when kernels are available.
    """

    swapped: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    unavailable: str | None = None
    backend: str | None = None


def is_2to4_sparse(weight: torch.Tensor) -> bool:
    """True for a 2-D ``(out, in)`` weight with ``in % 4 == 0`` and at most 2 non-zeros in every 4 columns."""
    return weight.ndim == 2 and check_nm(weight, 2, 4)


def semi_structured_support() -> tuple[str | None, str | None]:
    """``(backend, None)`` when this machine runs 2:4 sparse kernels, else ``(None, reason)``."""
    if not torch.cuda.is_available():
        return None, ("2:4 sparse kernels need a CUDA GPU with compute capability >= 8.0 (Ampere or newer); "
                      "no CUDA GPU is available")
    capability = torch.cuda.get_device_capability()
    if capability < (8, 0):
        return None, (f"2:4 sparse kernels need compute capability >= 8.0 (Ampere or newer); "
                      f"{torch.cuda.get_device_name()} has {capability[0]}.{capability[1]}")
    backend = "cusparselt" if torch.backends.cusparselt.is_available() else "cutlass"
    return backend, None


def _skip_reason(module: nn.Linear, require_cuda: bool) -> str | None:
    """Why this Linear cannot take a semi-structured weight (``None``: it can)."""
    weight = module.weight
    if isinstance(weight.data, torch.sparse.SparseSemiStructuredTensor):
        return "already semi-structured"
    if weight.device.type == "meta":
        return "weight is offloaded (meta device); load the model onto the GPU to use sparse kernels"
    if require_cuda and weight.device.type != "cuda":
        return f"weight is on {weight.device}, the kernels run on CUDA"
    if weight.dtype not in KERNEL_DTYPES:
        return f"dtype {str(weight.dtype).removeprefix('torch.')}: the kernels take float16 or bfloat16"
    if weight.shape[0] % MIN_BLOCK[0] or weight.shape[1] % MIN_BLOCK[1]:
        return f"shape {tuple(weight.shape)} is not a multiple of {MIN_BLOCK}"
    if not is_2to4_sparse(weight):
        return "weight is not 2:4 sparse"
    return None


def semi_structured_candidates(model: nn.Module, require_cuda: bool = True) -> tuple[dict[str, nn.Linear], dict[str, str]]:
    """Split the ``nn.Linear`` modules of ``model`` into ``(swappable, {name: why not})``.

    ``require_cuda=False`` checks sparsity, dtype and shape only (to plan on a CPU machine).
    """
    swappable, skipped = {}, {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            reason = _skip_reason(module, require_cuda)
            if reason is None:
                swappable[name] = module
            else:
                skipped[name] = reason
    return swappable, skipped


@torch.no_grad()
def enable_2to4_kernels(model: nn.Module) -> KernelReport:
    """Swap every 2:4-sparse fp16/bf16 ``nn.Linear`` weight of ``model`` (on a CUDA GPU) to a
    semi-structured sparse tensor, in place.

    Where the machine cannot run the kernels the model is not touched: a warning says why, and
    ``report.unavailable`` holds the same text. Returns a :class:`KernelReport`.
    """
    backend, unavailable = semi_structured_support()
    if unavailable:
        warnings.warn(f"{unavailable}; the model is left unchanged (dense kernels)", stacklevel=2)
        _, skipped = semi_structured_candidates(model, require_cuda=False)
        return KernelReport(skipped=skipped, unavailable=unavailable)
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    SparseSemiStructuredTensor._FORCE_CUTLASS = backend == "cutlass"
    swappable, skipped = semi_structured_candidates(model)
    report = KernelReport(skipped=skipped, backend=backend)
    for name, module in swappable.items():
        module.weight = nn.Parameter(to_sparse_semi_structured(module.weight.detach().contiguous()),
                                     requires_grad=False)
        report.swapped.append(name)
    return report
