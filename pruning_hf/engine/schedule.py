"""How a decoder layer meets the calibration batches while it is pruned (``PruningConfig.schedule``).

* ``layer`` (:func:`layer_pass`): the whole layer runs on every batch with hooks collecting the input
  statistics of its Linears (dense weights), the method prunes them all, then the layer runs again for
  its pruned outputs: two forward passes, every Linear's statistics from the dense layer.
* ``sublayer`` (:func:`sublayer_pass`): the layer's attention sub-block, then its MLP sub-block (the
  family's :class:`~pruning_hf.models.architectures.SublayerLayout`), each in three steps over all
  batches: statistics of the Linears reading the sub-block's normed input, prune them; run on to the
  output Linear (o_proj / down_proj) and record its input, prune it; apply it and add the residual.
  Every matmul runs once, with pruned weights, and each Linear's statistics come from the inputs it will
  really see (SparseGPT's "true sequential"). The recorded inputs wait on the activation storage.

With dense targets (``captured.dense``) the dense model's stream runs beside: in the layer schedule
as one more pass of the still-dense layer per batch (its Linears' inputs paired with the pruned
ones for the cross term ``X^T X_dense``); in the sub-block schedule one step ahead of the pruned
stream, so the dense stream always runs on weights not yet pruned, and an output Linear with fewer
outputs than inputs (``down_proj``) pairs its inputs with its dense outputs (``X^T Y_dense``, the
same fit for ``out / in`` of the flops). The dense stream runs inside ``captured.dense_stream`` (bf16 autocast
with ``PruningConfig.dense_precision``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from ..models.architectures import SubBlock, SublayerLayout, get_architecture, sublayer_layout, weight_matrix
from ..models.devices import execution_device
from ..sparsity.statistics import InputStatistics, StatisticsSpec
from .capture import CapturedInputs, call_layer, check_finite, run_layer
from .hooks import collect_input_statistics

__all__ = ["choose_layout", "layer_pass", "sublayer_pass"]

#: ``prune(targets, stats)``: the loop's callback that lets the method prune ``targets`` and writes them back
Prune = Callable[[dict[str, nn.Module], dict[str, InputStatistics]], None]
Items = list[torch.Tensor | str]


def choose_layout(model: nn.Module, config, method, per_layer: list[dict[str, nn.Module]]) -> SublayerLayout | None:
    """The sub-block layout when the sub-block schedule runs, else None (the layer schedule).

    ``auto`` picks the sub-block schedule when the method allows it, collects statistics, and the family's
    layout covers every target Linear; ``sublayer`` raises ValueError where it cannot run.
    """
    if config.schedule == "layer" or not method.sub_blocks or method.input_statistics() is None:
        return None  # without statistics the layer runs once either way
    layout = sublayer_layout(model)
    prefix = get_architecture(model).layers_path
    outside = sorted({name for index, targets in enumerate(per_layer) for name in targets
                      if layout is None or name[len(f"{prefix}.{index}."):] not in layout.linears})
    if layout is not None and not outside:
        return layout
    if config.schedule == "sublayer":
        why = (f"the layout of model_type={getattr(model.config, 'model_type', None)!r} is not known" if layout is None
               else f"{outside[0]} is outside the known sub-blocks")
        raise ValueError(f"schedule='sublayer' cannot run: {why}; use schedule='layer' or 'auto'")
    return None


@torch.no_grad()
def layer_pass(layer: nn.Module, captured: CapturedInputs, index: int, targets: dict[str, nn.Module],
               statistics: StatisticsSpec | None, prune: Prune) -> tuple[Items, Items | None]:
    """The ``layer`` schedule; returns the layer's pruned outputs and (dense targets) its dense outputs."""
    stats, dense = {}, None
    if statistics is not None and targets:
        if captured.dense is None:
            with collect_input_statistics(targets, statistics.hessian) as stats:
                run_layer(layer, captured, index, keep_outputs=False)
        else:
            stats, dense = _paired_statistics(layer, captured, index, targets, statistics.hessian)
    if targets:
        prune(targets, stats)
    del stats
    if captured.dense is not None and dense is None:  # nothing pruned here before: the dense stream runs on
        with captured.dense_stream(execution_device(layer)):
            dense = run_layer(layer, captured, index, keep_outputs=True, inputs=captured.dense)
    return run_layer(layer, captured, index, keep_outputs=True), dense


@contextmanager
def _recorded_inputs(modules: dict[str, nn.Module]) -> Iterator[dict[str, torch.Tensor]]:
    """``{name: input}`` of the last call of each module while the block runs."""
    seen: dict[str, torch.Tensor] = {}
    handles = [module.register_forward_pre_hook(lambda _, args, name=name: seen.__setitem__(name, args[0]))
               for name, module in modules.items()]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def _paired_statistics(layer, captured, index, targets, hessian) -> tuple[dict[str, InputStatistics], Items]:
    """Statistics with the cross term: per batch the still-dense layer runs on the dense stream, then on the
    pruned one; Linears that read the very same input tensor share one InputStatistics."""
    device = execution_device(layer)
    stats: dict[str, InputStatistics] = {}
    dense_outputs = []
    for hidden, dense, call in zip(captured.hidden, captured.dense, captured.calls[index]):
        with _recorded_inputs(targets) as dense_inputs, captured.dense_stream(device):
            out = call_layer(layer, captured.load(dense, device), call, device)
        dense_outputs.append(captured.store(check_finite(out, layer, index)))
        with _recorded_inputs(targets) as inputs:
            call_layer(layer, captured.load(hidden, device), call, device)
        if not stats:
            leaders = {}
            for name, x in inputs.items():
                leader = leaders.setdefault(id(x), name)
                stats[name] = stats[leader] if leader != name else InputStatistics(x.shape[-1], hessian, x.device,
                                                                                   cross=True)
        for name in {id(stats[name]): name for name in inputs}.values():
            stats[name].update(inputs[name], dense_inputs[name])
    return stats, dense_outputs


class _Reached(Exception):
    """Stops a forward call at a module; carries that module's input."""


def _input_of(module: nn.Module, run: Callable[[], object]) -> torch.Tensor:
    """Run ``run()`` until it calls ``module``; return that call's input (``module`` itself does not run)."""
    def stop(_, args):
        raise _Reached(args[0])

    handle = module.register_forward_pre_hook(stop)
    try:
        run()
    except _Reached as reached:
        return reached.args[0]
    finally:
        handle.remove()
    raise RuntimeError(f"the forward pass never reached {type(module).__name__}: the family's sub-block layout "
                       "does not match this model; use schedule='layer'")


class _Block:
    """One sub-block of one decoder layer, as callables on ``(batch, seq, hidden)`` tensors."""

    def __init__(self, spec: SubBlock, layer: nn.Module, index: int, calls: list, device: torch.device) -> None:
        self.spec, self.layer, self.index, self.calls, self.device = spec, layer, index, calls, device
        self.output = layer.get_submodule(spec.output)
        identity = lambda x: x  # noqa: E731
        self.pre, self.post, self.after = (layer.get_submodule(n) if n else identity
                                           for n in (spec.pre, spec.post, spec.after))

    def core(self, h: torch.Tensor, batch: int) -> torch.Tensor:
        """The output Linear's input for sub-block input ``h`` (the attention core, the MLP activations)."""
        if self.spec.activation:  # an MLP written inline in the layer (OPT)
            first = self.layer.get_submodule(self.spec.inputs[0])
            return getattr(self.layer, self.spec.activation)(first(self.pre(h)))
        if self.spec.core:
            return _input_of(self.output, lambda: self.layer.get_submodule(self.spec.core)(self.pre(h)))
        return _input_of(self.output, lambda: call_layer(self.layer, h, self.calls[batch], self.device))

    def finish(self, h: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
        """The sub-block's output from the output Linear's result ``projected``: its norm, the residual add, a
        norm after it."""
        return check_finite(self.after(h + self.post(projected)), self.layer, self.index)


@torch.no_grad()
def sublayer_pass(layer: nn.Module, layout: SublayerLayout, captured: CapturedInputs, index: int,
                  targets: dict[str, nn.Module], statistics: StatisticsSpec, prune: Prune) -> tuple[Items, Items | None]:
    """The ``sublayer`` schedule; returns the layer's pruned outputs and (dense targets) its dense outputs."""
    device = execution_device(layer)
    names = {id(module): name for name, module in targets.items()}
    hidden, dense = captured.hidden, captured.dense
    for spec in (layout.attention, layout.mlp):
        block = _Block(spec, layer, index, captured.calls[index], device)
        outputs, dense_outputs = _sub_block(block, captured, names, statistics, prune, hidden, dense)
        if hidden is not captured.hidden:  # the attention sub-block's outputs, read by the MLP sub-block
            captured.release(hidden + (dense or []))
        hidden, dense = outputs, dense_outputs
    return hidden, dense


def _sub_block(block: _Block, captured: CapturedInputs, names: dict[int, str], statistics: StatisticsSpec,
               prune: Prune, hidden: Items, dense: Items | None) -> tuple[Items, Items | None]:
    """One sub-block over every batch (see the module docstring); returns its outputs (and the dense stream's)."""
    device, load, store = block.device, captured.load, captured.store
    inputs = {names[id(m)]: m for m in map(block.layer.get_submodule, block.spec.inputs) if id(m) in names}
    output = {names[id(block.output)]: block.output} if id(block.output) in names else {}
    collect = _Collector(statistics, dense is not None)
    dense_cores = []
    for batch, item in enumerate(hidden):  # 1. statistics of the input Linears; the dense stream runs on
        d = load(dense[batch], device) if dense is not None else None
        if inputs:
            collect.update(block.pre(load(item, device)), block.pre(d) if d is not None else None)
        if d is not None:
            with captured.dense_stream(device):
                dense_cores.append(store(block.core(d, batch)))
    if inputs:
        prune(inputs, collect.result(inputs))
    by_outputs = dense is not None and pairs_dense_outputs(block.output)
    bias = getattr(block.output, "bias", None)
    collect = _Collector(statistics, dense is not None, weight_matrix(block.output).shape[0] if by_outputs else None)
    cores, dense_outputs = [], [] if dense is not None else None
    for batch, item in enumerate(hidden):  # 2. the output Linear's inputs, with the input Linears pruned
        y = block.core(load(item, device), batch)
        cores.append(store(y))
        if dense is None:
            if output:
                collect.update(y, None)
            continue
        y_dense = load(dense_cores[batch], device)
        with captured.dense_stream(device):
            projected = block.output(y_dense)  # the still-dense output Linear on the dense stream
            dense_outputs.append(store(block.finish(load(dense[batch], device), projected)))
        if output:
            collect.update(y, (projected if bias is None else projected - bias) if by_outputs else y_dense)
    captured.release(dense_cores)
    if output:
        prune(output, collect.result(output))
    outputs = [store(block.finish(load(item, device), block.output(load(y, device))))
               for item, y in zip(hidden, cores)]
    captured.release(cores)  # 3. the sub-block's outputs
    return outputs, dense_outputs


def pairs_dense_outputs(linear: nn.Module) -> bool:
    """Whether dense targets pair an output Linear's inputs with its dense outputs (``X^T Y_dense``, ``in x out``)
    rather than with its dense inputs (``X^T X_dense``, ``in x in``): when it has fewer outputs than inputs."""
    out_features, in_features = weight_matrix(linear).shape
    return out_features < in_features


class _Collector:
    """One InputStatistics shared by the Linears that read one input, created on the first batch."""

    def __init__(self, statistics: StatisticsSpec, cross: bool, cross_outputs: int | None = None) -> None:
        self.statistics, self.cross, self.cross_outputs, self.stats = statistics, cross, cross_outputs, None

    def update(self, x: torch.Tensor, dense: torch.Tensor | None) -> None:
        if self.stats is None:
            self.stats = InputStatistics(x.shape[-1], self.statistics.hessian, x.device, cross=self.cross,
                                         cross_outputs=self.cross_outputs)
        self.stats.update(x, dense)

    def result(self, modules: dict[str, nn.Module]) -> dict[str, InputStatistics]:
        return dict.fromkeys(modules, self.stats)
