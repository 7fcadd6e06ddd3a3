"""Compressed sparse checkpoints: pruned weights stored as their kept values plus a compact layout.

Two layouts, chosen per weight by :func:`compress_weight`:

* **bitmask** (any sparsity): ``weight`` holds the non-zero values in row-major order, 1-D
  ``(nnz,)``; ``weight_bitmask`` holds one bit per element (``uint8``, ``ceil(numel / 8)`` bytes).
  fp16/bf16 at 50% sparsity: ``0.5 + 1/16 = 0.5625`` of the dense bytes.
* **N:M** (at most ``n`` non-zeros in each group of ``m <= 8`` consecutive input columns):
  ``weight`` holds ``n`` values per group, ``(out, in * n / m)``, the layout of the 2:4 GPU kernels'
  values; ``weight_nm_index`` holds each value's position in its group in ``ceil(log2 m)`` bits
  (rounded up to 1, 2 or 4), packed into bytes. fp16/bf16 2:4: ``0.5 + 1/16 = 0.5625`` of the dense
  bytes, like the bitmask, but decompressed by a plain scatter; 1:4: ``0.25 + 1/32``.

The compressed ``weight`` deliberately has a shape the model does not expect: a loader that does not
know the format (transformers without ``pruning_hf`` imported) stops with a size-mismatch error
instead of silently running a model whose pruned weights were dropped.

:func:`pruning_hf.hf.checkpoint.compress_checkpoint` rewrites a saved checkpoint with these codecs
(memory: one shard's compressed tensors); the transformers quantizer in :mod:`pruning_hf.hf.quantizer`
decompresses while loading. Everything here is a pure function of tensors.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

__all__ = [
    "BITMASK_SUFFIX", "NM_INDEX_SUFFIX", "FORMAT", "pack_bits", "unpack_bits", "bitmask_compress",
    "bitmask_decompress", "nm_compress", "nm_decompress", "index_bits", "compress_weight",
    "decompress_weight",
]

FORMAT = "pruning_hf.sparse-v1"
BITMASK_SUFFIX = "_bitmask"    # "<module>.weight_bitmask"
NM_INDEX_SUFFIX = "_nm_index"  # "<module>.weight_nm_index"
MAX_NM_GROUP = 8  # larger groups are stored with the bitmask layout
_INT_VIEW = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}  # same-size views of float dtypes


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes ``< 2**bits`` into bytes, lowest bits first.

    Args:
        codes: any-shape integer tensor (flattened row-major).
        bits: 1, 2, 4 or 8.
    Returns:
        ``(ceil(codes.numel() * bits / 8),)`` uint8.
    """
    if bits not in (1, 2, 4, 8):
        raise ValueError(f"bits must be 1, 2, 4 or 8, got {bits}")
    per_byte = 8 // bits
    flat = codes.reshape(-1).to(torch.uint8)
    padding = (-flat.numel()) % per_byte
    if padding:
        flat = torch.cat([flat, flat.new_zeros(padding)])
    columns = flat.view(-1, per_byte)
    packed = columns[:, 0].clone()
    for j in range(1, per_byte):
        packed |= columns[:, j] << (j * bits)
    return packed


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: ``(count,)`` uint8 codes from packed bytes."""
    if bits not in (1, 2, 4, 8):
        raise ValueError(f"bits must be 1, 2, 4 or 8, got {bits}")
    per_byte = 8 // bits
    if packed.numel() * per_byte < count:
        raise ValueError(f"{packed.numel()} packed bytes hold at most {packed.numel() * per_byte} "
                         f"{bits}-bit codes, {count} requested")
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
    codes = (packed.reshape(-1, 1) >> shifts) & ((1 << bits) - 1)
    return codes.reshape(-1)[:count]


def _is_nonzero(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor != 0`` (+0 and -0 are zeros), computed on the bit patterns: several times faster for bf16."""
    bits = tensor.view(_INT_VIEW[tensor.element_size()])
    return (bits & torch.iinfo(bits.dtype).max) != 0


def _cpu_bits(tensor: torch.Tensor) -> np.ndarray:
    """Flat numpy view of a CPU tensor's bit patterns (numpy has no bfloat16)."""
    return tensor.contiguous().reshape(-1).view(_INT_VIEW[tensor.element_size()]).numpy()


def bitmask_compress(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight`` (any shape) -> ``(values (nnz,), bitmask (ceil(numel/8),) uint8)``; zeros (+0 and -0) are dropped."""
    if weight.device.type != "cpu":
        return _bitmask_compress_torch(weight)
    bits = _cpu_bits(weight)  # on CPU numpy's index gather is several times faster than torch's mask indexing
    keep = (bits & np.iinfo(bits.dtype).max) != 0  # all bits but the sign: -0.0 is a zero
    values = torch.from_numpy(bits[np.flatnonzero(keep)]).view(weight.dtype)
    return values, torch.from_numpy(np.packbits(keep, bitorder="little"))


def bitmask_decompress(values: torch.Tensor, bitmask: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Dense tensor of ``shape`` with ``values`` at the set bits of ``bitmask`` (row-major), zeros elsewhere."""
    if values.device.type != "cpu":
        return _bitmask_decompress_torch(values, bitmask, shape)
    numel = math.prod(shape)
    positions = np.flatnonzero(np.unpackbits(bitmask.numpy(), count=numel, bitorder="little").view(np.bool_))
    _check_count(positions.size, values)
    bits = _cpu_bits(values)
    dense = np.zeros(numel, dtype=bits.dtype)
    dense[positions] = bits
    return torch.from_numpy(dense).view(values.dtype).view(shape)


def _bitmask_compress_torch(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`bitmask_compress` in torch ops, for tensors on an accelerator."""
    keep = weight.reshape(-1) != 0
    return weight.reshape(-1)[keep], pack_bits(keep, 1)


def _bitmask_decompress_torch(values: torch.Tensor, bitmask: torch.Tensor, shape) -> torch.Tensor:
    """:func:`bitmask_decompress` in torch ops, for tensors on an accelerator."""
    numel = math.prod(shape)
    keep = unpack_bits(bitmask, 1, numel).bool()
    _check_count(int(keep.sum()), values)
    return values.new_zeros(numel).masked_scatter_(keep, values).view(shape)


def _check_count(marked: int, values: torch.Tensor) -> None:
    if marked != values.numel():
        raise ValueError(f"bitmask marks {marked} non-zeros but {values.numel()} values are stored")


def index_bits(m: int) -> int:
    """Bits per in-group position for groups of ``m`` (2..8): ``ceil(log2 m)`` rounded up to 1, 2 or 4."""
    if not 2 <= m <= MAX_NM_GROUP:
        raise ValueError(f"the N:M layout takes groups of 2 to {MAX_NM_GROUP}, got m={m}")
    needed = max(1, math.ceil(math.log2(m)))
    return next(bits for bits in (1, 2, 4) if bits >= needed)


@functools.lru_cache(maxsize=None)
def _position_table(n: int, m: int) -> torch.Tensor:
    """``(2**m, n)``: for each non-zero pattern of a group (bit j = column j), the positions to store:
    its non-zeros in column order, padded with its first zero columns."""
    rows = []
    for pattern in range(2 ** m):
        columns = sorted(range(m), key=lambda j: (not pattern >> j & 1, j))
        rows.append(columns[:n])
    return torch.tensor(rows, dtype=torch.uint8)


def nm_compress(weight: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, in)`` N:M-sparse weight -> ``(values (out, in*n/m), packed positions uint8)``.

    Groups with fewer than ``n`` non-zeros store explicit zeros, so the result is always dense-shaped.
    Raises ValueError when the weight is not N:M sparse (or ``m`` is above 8).
    """
    bits = index_bits(m)
    out_features, in_features = weight.shape
    if in_features % m:
        raise ValueError(f"weight of shape {tuple(weight.shape)} is not {n}:{m} sparse (width not a multiple of {m})")
    groups = weight.reshape(out_features, in_features // m, m)
    nonzero = _is_nonzero(groups).to(torch.uint8)
    if (nonzero.sum(-1, dtype=torch.uint8) > n).any():
        raise ValueError(f"weight of shape {tuple(weight.shape)} is not {n}:{m} sparse")
    pattern = (nonzero << torch.arange(m, dtype=torch.uint8, device=weight.device)).sum(-1, dtype=torch.uint8)
    table = _position_table(n, m).to(weight.device)
    positions = table.index_select(0, pattern.view(-1).long()).view(out_features, in_features // m, n)
    values = torch.gather(groups, -1, positions.long())
    return values.reshape(out_features, -1), pack_bits(positions, bits)


def nm_decompress(values: torch.Tensor, packed_index: torch.Tensor, shape: torch.Size | tuple[int, ...],
                  n: int, m: int) -> torch.Tensor:
    """Inverse of :func:`nm_compress`: the dense ``(out, in)`` weight."""
    out_features, in_features = shape
    if in_features % m or values.shape != (out_features, in_features // m * n):
        raise ValueError(f"{n}:{m} values of shape {tuple(values.shape)} do not fit a weight of shape {tuple(shape)}")
    positions = unpack_bits(packed_index, index_bits(m), values.numel()).long()
    dense = values.new_zeros(out_features, in_features // m, m)
    dense.scatter_(-1, positions.view(out_features, -1, n), values.view(out_features, -1, n))
    return dense.view(out_features, in_features)


def compress_weight(weight: torch.Tensor, nm: tuple[int, int] | None = None) -> dict[str, torch.Tensor] | None:
    """Compressed form of one 2-D floating weight, or ``None`` when storing it dense is smaller.

    Returns ``{"": values, SUFFIX: layout}``: the keys are suffixes appended to the weight's name.
    The N:M layout when ``nm`` is given, the weight satisfies it and it is not larger than the bitmask
    (2:4 and 1:4 yes, 4:8 no: 4 bits per kept value), else the bitmask when that saves bytes.
    """
    if weight.ndim != 2 or not weight.is_floating_point():
        return None
    item = weight.element_size()
    bitmask_bytes = int(torch.count_nonzero(weight)) * item + math.ceil(weight.numel() / 8)
    if nm is not None and nm[1] <= MAX_NM_GROUP:
        n, m = nm
        nm_bytes = weight.numel() // m * n * item + math.ceil(weight.numel() // m * n * index_bits(m) / 8)
        if nm_bytes <= bitmask_bytes:  # 2:4 ties with the bitmask; its layout decompresses faster
            try:
                values, index = nm_compress(weight, n, m)
                return {"": values, NM_INDEX_SUFFIX: index}
            except ValueError:  # not N:M (an embedding, a Linear left out of pruning): try the bitmask
                pass
    if bitmask_bytes >= weight.numel() * item:
        return None
    values, bitmask = bitmask_compress(weight)
    return {"": values, BITMASK_SUFFIX: bitmask}


def decompress_weight(stored: dict[str, torch.Tensor], shape: torch.Size | tuple[int, ...],
                      nm: tuple[int, int] | None = None) -> torch.Tensor:
    """Dense weight from the tensors stored under one name (``""`` values + at most one layout suffix)."""
    values = stored[""]
    if BITMASK_SUFFIX in stored:
        return bitmask_decompress(values, stored[BITMASK_SUFFIX], shape)
    if NM_INDEX_SUFFIX in stored:
        if nm is None:
            raise ValueError("an N:M-compressed weight needs the checkpoint's compression config (n, m)")
        return nm_decompress(values, stored[NM_INDEX_SUFFIX], shape, *nm)
    return values
