"""Calibration activations between decoder layers: capture layer 0's inputs, run a layer on them.

:class:`CapturedInputs` holds each layer's input for every calibration batch (on a device, or in
temporary files with ``storage="disk"``) and the other arguments each layer is called with (masks,
rotary embeddings ...), recorded once by running the base model with recorders in place of the layers.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from contextlib import nullcontext

import torch
from torch import nn

from ..models.devices import execution_device, native_bfloat16
from ..utils.checks import all_finite
from .hooks import collect_input_statistics
from .report import NonFiniteError

__all__ = ["CapturedInputs", "dense_stream_dtype", "check_activation_storage", "capture_layer_inputs", "run_layer",
           "call_layer", "check_finite", "head_statistics"]


def check_activation_storage(storage: torch.device | str) -> torch.device:
    """The device holding activations for ``activation_storage`` (``"disk"`` stages them on CPU)."""
    try:
        return torch.device("cpu" if str(storage) == "disk" else storage)
    except (RuntimeError, TypeError):
        raise ValueError(f"activation_storage={storage!r} is neither 'disk' nor a torch device "
                         "('cpu', 'cuda:0' ...)") from None


class CapturedInputs:
    """Inputs of the decoder layers for every calibration batch.

    ``hidden[b]`` is the current layer's input for batch ``b``: a ``(batch, seq, hidden)`` tensor on
    the ``storage`` device, or with ``storage="disk"`` the path of a safetensors file holding it (read
    back one batch at a time). ``calls[layer][b]`` holds that layer's other ``(args, kwargs)``.
    ``dense`` (dense targets only, :meth:`carry_dense`) holds the same layer's input in the dense model;
    its layers run inside :meth:`dense_stream`.
    """

    def __init__(self, num_layers: int, storage: torch.device | str = "cpu") -> None:
        self.on_disk = str(storage) == "disk"
        self.storage = check_activation_storage(storage)
        self.hidden: list[torch.Tensor | str] = []
        self.dense: list[torch.Tensor | str] | None = None
        self.dense_dtype: torch.dtype | None = None  # autocast dtype of the dense stream (None: the model's)
        self.calls: list[list[tuple[tuple, dict]]] = [[] for _ in range(num_layers)]
        self._folder = tempfile.mkdtemp(prefix="pruning_hf_activations_") if self.on_disk else None
        if self._folder:
            weakref.finalize(self, shutil.rmtree, self._folder, True)
        self._files = 0

    def store(self, hidden: torch.Tensor) -> torch.Tensor | str:
        """Keep one batch of hidden states on the storage device or in a new file."""
        hidden = hidden.detach().to(self.storage)
        if not self.on_disk:
            return hidden
        from safetensors.torch import save_file

        path = os.path.join(self._folder, f"{self._files}.safetensors")
        self._files += 1
        save_file({"hidden": hidden.contiguous()}, path)
        return path

    def load(self, item: torch.Tensor | str, device: torch.device) -> torch.Tensor:
        if isinstance(item, str):
            from safetensors.torch import load_file

            item = load_file(item)["hidden"]
        return item.to(device)

    def tensors(self, items: list[torch.Tensor | str]) -> _Batches:
        """``items`` (stored batches) as a sequence of tensors on the storage device, files read on access."""
        return _Batches(self, items)

    def release(self, items: list[torch.Tensor | str]) -> None:
        """Stored batches no longer needed: their files are deleted."""
        for item in items:
            if isinstance(item, str):
                os.remove(item)

    def carry_dense(self, dtype: torch.dtype | None = None) -> None:
        """Start the dense model's stream from the current inputs (a copy of each batch's file on disk); ``dtype``:
        its matmuls run autocast to it (:func:`dense_stream_dtype`)."""
        self.dense_dtype = dtype
        self.dense = [self.store(self.load(item, self.storage)) if self.on_disk else item for item in self.hidden]

    def dense_stream(self, device: torch.device):
        """Context for running layers on the dense stream: autocast to :attr:`dense_dtype` when it is set."""
        return torch.autocast(device.type, dtype=self.dense_dtype) if self.dense_dtype is not None else nullcontext()

    def advance(self, outputs: list[torch.Tensor | str], dense: list[torch.Tensor | str] | None = None) -> None:
        """The outputs of the current layer become the next layer's inputs (old files are deleted);
        ``dense``: the dense model's outputs, when it is carried."""
        self.release(self.hidden)
        self.hidden = outputs
        if dense is not None:
            self.release(self.dense or [])
            self.dense = dense


def dense_stream_dtype(precision: str, layer: nn.Module) -> torch.dtype | None:
    """The autocast dtype for ``PruningConfig.dense_precision`` given a decoder layer of the model (None: the
    model's own dtype): bf16 when asked, or with 'auto' for a float32 model on a device with native bf16."""
    dtype = next(layer.parameters()).dtype
    if precision == "bfloat16" or (precision == "auto" and dtype == torch.float32
                                   and native_bfloat16(execution_device(layer))):
        return torch.bfloat16
    return None


class _Batches(Sequence):
    """Stored batches read as ``(batch, seq, hidden)`` tensors, one at a time (what methods observe)."""

    def __init__(self, captured: CapturedInputs, items: list[torch.Tensor | str]) -> None:
        self.captured, self.items = captured, items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.captured.load(self.items[index], self.captured.storage)


class _InputRecorder(nn.Module):
    """Stands in for a decoder layer during capture: records its call and returns the input unchanged, in the
    form the replaced layer returns its output (a tensor, or a tuple whose first item is the hidden states,
    as Falcon's layers do: the model's layer loop indexes it), so every later layer sees the right shape."""

    def __init__(self, layer: nn.Module, index: int, captured: CapturedInputs, returns: dict) -> None:
        object.__setattr__(self, "_wrapped", layer)  # not a submodule: keep it out of named_modules()
        super().__init__()
        object.__setattr__(self, "_captured", captured)
        object.__setattr__(self, "_returns", returns)  # shared by all recorders: {"items": None | tuple length}
        self.index = index

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._wrapped, name)  # model code may read attributes such as attention_type

    def forward(self, hidden_states, *args, **kwargs):
        if "items" not in self._returns:  # once: run the real layer to learn its return convention
            out = self._wrapped(hidden_states, *args, **kwargs)
            self._returns["items"] = len(out) if isinstance(out, (tuple, list)) else None
        if self.index == 0:
            self._captured.hidden.append(self._captured.store(hidden_states))
        self._captured.calls[self.index].append((args, kwargs))
        items = self._returns["items"]
        return hidden_states if items is None else (hidden_states,) + (None,) * (items - 1)


@torch.no_grad()
def capture_layer_inputs(model: nn.Module, layers: nn.ModuleList, windows: torch.Tensor, batch_size: int,
                         storage: torch.device | str = "cpu") -> CapturedInputs:
    """Run the base model on ``windows`` ``(num, seq)`` with recorders in place of ``layers``.

    ``storage``: a device for the hidden states, or ``"disk"`` (temporary files).
    """
    captured = CapturedInputs(len(layers), storage)
    originals = list(layers)
    device = execution_device(model.get_input_embeddings())
    returns: dict = {}
    try:
        for index, layer in enumerate(originals):
            layers[index] = _InputRecorder(layer, index, captured, returns)
        for batch in windows.split(batch_size):
            model.base_model(input_ids=batch.to(device), use_cache=False)
    finally:
        for index, layer in enumerate(originals):
            layers[index] = layer
    return captured


@torch.no_grad()
def run_layer(layer: nn.Module, captured: CapturedInputs, index: int, keep_outputs: bool,
              inputs: list[torch.Tensor | str] | None = None) -> list[torch.Tensor | str]:
    """Run decoder layer ``index`` on every captured batch (``inputs``: another stream of them, e.g. the
    dense model's); return its outputs (on storage) if asked."""
    device = execution_device(layer)
    outputs = []
    for hidden, call in zip(captured.hidden if inputs is None else inputs, captured.calls[index]):
        out = call_layer(layer, captured.load(hidden, device), call, device)
        if keep_outputs:
            outputs.append(captured.store(check_finite(out, layer, index)))
    return outputs


def call_layer(layer: nn.Module, hidden: torch.Tensor, call: tuple[tuple, dict], device: torch.device) -> torch.Tensor:
    """Decoder ``layer``'s output hidden states for ``hidden`` and one recorded ``(args, kwargs)`` call."""
    from accelerate.utils import send_to_device

    args, kwargs = call
    out = layer(hidden, *send_to_device(args, device), **send_to_device(kwargs, device))
    return out[0] if isinstance(out, (tuple, list)) else out


def check_finite(out: torch.Tensor, layer: nn.Module, index: int) -> torch.Tensor:
    """``out`` (decoder layer ``index``'s output), or NonFiniteError saying which parameters hold NaN/Inf."""
    if not all_finite(out):
        raise NonFiniteError(f"decoder layer {index} produced NaN/Inf activations; {_finiteness(layer)}")
    return out


def _finiteness(layer: nn.Module) -> str:
    """Which parameters of ``layer`` hold NaN/Inf, for an error message."""
    bad = [name for name, param in layer.named_parameters() if not torch.isfinite(param).all()]
    if bad:
        return f"non-finite parameters in it: {', '.join(bad)}"
    return "its parameters are finite, so its inputs or the dtype's range overflowed (try float32 or bfloat16)"


class _StopForward(Exception):
    pass


@torch.no_grad()
def head_statistics(model: nn.Module, head: nn.Module, windows: torch.Tensor, batch_size: int, hessian: bool):
    """Input statistics of the LM head from full forward passes, stopped just before the head."""
    def stop(module, args):
        raise _StopForward

    device = execution_device(model.get_input_embeddings())
    with collect_input_statistics({"head": head}, hessian) as stats:
        handle = head.register_forward_pre_hook(stop)
        try:
            for batch in windows.split(batch_size):
                try:
                    model(input_ids=batch.to(device), use_cache=False)
                except _StopForward:
                    pass
        finally:
            handle.remove()
    return stats["head"]
