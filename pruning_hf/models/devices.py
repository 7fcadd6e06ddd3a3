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

__all__ = ["execution_device", "native_bfloat16", "onloaded", "write_parameter", "write_weight", "is_offloaded",
           "retie_offloaded_embeddings"]

_ONLOADED = "_pruning_hf_onloaded"  # marks a hook paused by onloaded()


def _hook(module: nn.Module):
    return getattr(module, "_hf_hook", None)


def _offload_hook(module: nn.Module):
    """The module's accelerate hook when it offloads the module's own weights (also while onloaded), else None."""
    hook = _hook(module)
    if hook is None or getattr(hook, "weights_map", None) is None:
        return None
    return hook if hook.offload or getattr(hook, _ONLOADED, False) else None


def is_offloaded(module: nn.Module) -> bool:
    """True when accelerate keeps this module's weights in a weights map (CPU RAM or disk)."""
    return _offload_hook(module) is not None


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


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 matrices natively (faster than fp32): a CUDA GPU that supports bf16,
    or a CPU with AVX512-BF16 or AMX tiles."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probes = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
        return any(probe() for probe in probes if probe is not None)
    return False


def _release(module: nn.Module, hook) -> None:
    hook.offload = True
    delattr(hook, _ONLOADED)
    hook.post_forward(module, None)  # weights back to the meta device; the weights map holds them


@contextmanager
def onloaded(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Materialise the offloaded weights of ``modules`` and their submodules on the execution device.

    Inside the block the offload hooks are paused, so forward calls reuse the loaded weights instead
    of reading them from the weights map (disk) on every call; on exit the weights go back to the
    meta device. Write changed weights with :func:`write_weight` so the weights map gets them too.
    Peak memory is the weights of ``modules``, which is how the engine bounds it by one decoder layer.
    """
    with ExitStack() as stack:
        for module in modules:
            for sub in module.modules():
                hook = _hook(sub)
                if hook is None or not getattr(hook, "offload", False) or getattr(hook, "weights_map", None) is None:
                    continue
                hook.pre_forward(sub)
                hook.offload = False
                setattr(hook, _ONLOADED, True)
                stack.callback(_release, sub, hook)
        yield


def _scratch_dir() -> str:
    """A fresh folder for one weights map's rewritten weights, removed when the process exits."""
    folder = tempfile.mkdtemp(prefix="pruning_hf_offload_")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def _write_offloaded(module: nn.Module, name: str, value: torch.Tensor) -> None:
    from accelerate.utils import OffloadedWeightsLoader, PrefixedDataset, offload_weight

    weights_map = _offload_hook(module).weights_map
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


def write_parameter(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Store ``value`` into the module's own parameter ``name`` (same shape, cast to its dtype), offload-aware."""
    param = getattr(module, name)
    if param.device.type != "meta":
        with torch.no_grad():
            param.copy_(value.to(param.dtype))
    if is_offloaded(module):
        _write_offloaded(module, name, value.to(param.dtype))


def write_weight(module: nn.Module, matrix: torch.Tensor) -> None:
    """Store an ``(out, in)`` weight into a Linear (or transposed into a Conv1D), offload-aware."""
    write_parameter(module, "weight", matrix if isinstance(module, nn.Linear) else matrix.t())


def retie_offloaded_embeddings(model: nn.Module) -> None:
    """Tie an offloaded model's LM head to its input embeddings again (before saving).

    A forward pass (calibration, evaluation) through modules accelerate offloads swaps their parameters, which
    unties ``lm_head.weight`` from the embeddings; transformers then saves the matrix twice. When the config
    ties them and both still hold the same values (the head was not pruned on its own), tie them again.
    """
    head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    if not getattr(model.config, "tie_word_embeddings", False) or head is None or embeddings is None \
            or head.weight is embeddings.weight:
        return
    with onloaded([head, embeddings]):
        same = head.weight.shape == embeddings.weight.shape and torch.equal(head.weight, embeddings.weight)
    if same:
        model.tie_weights()
