"""Where a module computes, and how to read and write its weights when accelerate offloads them.

With ``device_map`` / ``max_memory`` / ``offload_folder``, accelerate keeps offloaded weights in a
``weights_map`` (CPU RAM or memory-mapped files on disk) and loads them onto the execution device for
each forward call. Pruned weights must therefore be written into that map, not only into the module,
or the next forward call would bring the original weights back.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from contextlib import ExitStack, contextmanager
from typing import Iterable, Iterator

import torch
from torch import nn

__all__ = ["execution_device", "onloaded", "write_weight", "is_offloaded"]

_scratch_dirs: list[str] = []


def _hook(module: nn.Module):
    return getattr(module, "_hf_hook", None)


def is_offloaded(module: nn.Module) -> bool:
    hook = _hook(module)
    return bool(hook is not None and getattr(hook, "offload", False) and getattr(hook, "weights_map", None) is not None)


def execution_device(module: nn.Module) -> torch.device:
    """The device a module computes on: accelerate's execution device, else its first real parameter's."""
    for sub in module.modules():
        device = getattr(_hook(sub), "execution_device", None)
        if device is not None:
            return torch.device(device if not isinstance(device, int) else f"cuda:{device}")
    for param in module.parameters():
        if param.device.type != "meta":
            return param.device
    return torch.device("cpu")


@contextmanager
def onloaded(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Materialise offloaded weights of ``modules`` on their execution device for the block."""
    from accelerate.utils import align_module_device

    with ExitStack() as stack:
        for module in modules:
            if is_offloaded(module):
                stack.enter_context(align_module_device(module))
        yield


def _scratch_dir() -> str:
    if not _scratch_dirs:
        _scratch_dirs.append(tempfile.mkdtemp(prefix="pruning_hf_offload_"))
        atexit.register(shutil.rmtree, _scratch_dirs[0], ignore_errors=True)
    return _scratch_dirs[0]


def _write_offloaded(module: nn.Module, name: str, value: torch.Tensor) -> None:
    from accelerate.utils import OffloadedWeightsLoader, PrefixedDataset, offload_weight

    weights_map = _hook(module).weights_map
    key = name
    while isinstance(weights_map, PrefixedDataset):
        key = weights_map.prefix + key
        weights_map = weights_map.dataset
    value = value.detach().to("cpu").contiguous()
    if isinstance(weights_map, OffloadedWeightsLoader):
        if key in weights_map.state_dict:
            weights_map.state_dict[key] = value
        else:  # on disk: write our own memory-mapped copy, never into the user's checkpoint files
            if weights_map.save_folder is None:
                weights_map.save_folder = _scratch_dir()
            offload_weight(value, key, weights_map.save_folder, weights_map.index)
    elif isinstance(weights_map, dict):
        weights_map[key] = value
    else:
        raise TypeError(f"cannot write offloaded weight {key!r} into a {type(weights_map).__name__}")


def write_weight(module: nn.Module, matrix: torch.Tensor) -> None:
    """Store an ``(out, in)`` weight into a Linear (or transposed into a Conv1D), offload-aware."""
    weight = module.weight
    value = matrix if isinstance(module, nn.Linear) else matrix.t()
    if weight.device.type != "meta":
        with torch.no_grad():
            weight.copy_(value.to(weight.dtype))
    if is_offloaded(module):
        _write_offloaded(module, "weight", value.to(weight.dtype))
