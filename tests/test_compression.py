"""Compressed sparse checkpoints: packing functions, save_pretrained(compress=True), stock reload."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from conftest import tiny_model
from pruning_hf import PruningConfig, prune
from pruning_hf.sparsity.compression import (
    BITMASK_SUFFIX, NM_INDEX_SUFFIX, bitmask_compress, bitmask_decompress, compress_weight, decompress_weight,
    index_bits, nm_compress, nm_decompress, pack_bits, unpack_bits,
)
from pruning_hf.sparsity.masks import nm_mask
from pruning_hf.utils.storage import folder_bytes

pytestmark = pytest.mark.usefixtures("one_thread")


def _nbytes(parts: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in parts.values())


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("count", [1, 7, 64, 1001])
def test_pack_bits_round_trip(bits, count):
    codes = torch.randint(0, 2 ** bits, (count,), generator=torch.Generator().manual_seed(count))
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-count * bits // 8)
    assert torch.equal(unpack_bits(packed, bits, count), codes.to(torch.uint8))


def test_pack_bits_layout_and_errors():
    assert pack_bits(torch.tensor([1, 0, 0, 0, 0, 0, 0, 1]), 1).tolist() == [0b10000001]
    assert pack_bits(torch.tensor([3, 0, 1, 2]), 2).tolist() == [0b10010011]
    with pytest.raises(ValueError, match="bits must be 1, 2, 4 or 8, got 3"):
        pack_bits(torch.tensor([1]), 3)
    with pytest.raises(ValueError, match="hold at most 8"):
        unpack_bits(torch.zeros(1, dtype=torch.uint8), 1, 9)
    assert [index_bits(m) for m in (2, 3, 4, 5, 8)] == [1, 2, 2, 4, 4]
    with pytest.raises(ValueError, match="groups of 2 to 8, got m=16"):
        index_bits(16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.93, 1.0])
def test_bitmask_round_trip(dtype, sparsity):
    weight = torch.randn(24, 40).to(dtype)
    weight[torch.rand(24, 40, generator=torch.Generator().manual_seed(1)) < sparsity] = 0
    values, bitmask = bitmask_compress(weight)
    assert values.numel() == int((weight != 0).sum()) and bitmask.numel() == 24 * 40 // 8
    restored = bitmask_decompress(values, bitmask, weight.shape)
    assert restored.dtype == dtype and torch.equal(restored, weight)
    with pytest.raises(ValueError, match="values are stored"):
        bitmask_decompress(values[:-1] if values.numel() else torch.ones(1, dtype=dtype), bitmask, weight.shape)


def test_bitmask_numpy_and_torch_paths_agree_and_drop_negative_zeros():
    from pruning_hf.sparsity.compression import _bitmask_compress_torch, _bitmask_decompress_torch

    weight = torch.randn(8, 64).to(torch.bfloat16)
    weight[:, ::3] = 0.0
    weight[:, 1::3] = -0.0
    values, bitmask = bitmask_compress(weight)
    torch_values, torch_bitmask = _bitmask_compress_torch(weight)
    assert torch.equal(values, torch_values) and torch.equal(bitmask, torch_bitmask)
    assert values.numel() == int((weight != 0).sum())  # -0.0 is not stored
    assert torch.equal(_bitmask_decompress_torch(values, bitmask, weight.shape), bitmask_decompress(values, bitmask,
                                                                                                      weight.shape))


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (3, 8), (1, 2)])
def test_nm_round_trip_including_groups_with_fewer_non_zeros(n, m):
    weight = torch.randn(16, 64, dtype=torch.bfloat16)
    weight = weight * nm_mask(weight.float().abs(), n, m)
    weight[0, :m] = 0  # an all-zero group
    weight[1, 1:m] = 0  # a group with one non-zero, at position 0
    values, index = nm_compress(weight, n, m)
    assert values.shape == (16, 64 // m * n)
    assert index.numel() == -(-16 * 64 // m * n * index_bits(m) // 8)
    assert torch.equal(nm_decompress(values, index, weight.shape, n, m), weight)


def test_nm_compress_rejects_weights_that_break_the_pattern():
    weight = torch.ones(4, 8)
    with pytest.raises(ValueError, match=r"is not 2:4 sparse"):
        nm_compress(weight, 2, 4)
    with pytest.raises(ValueError, match="do not fit"):
        nm_decompress(torch.ones(4, 3), torch.zeros(2, dtype=torch.uint8), (4, 8), 2, 4)


def test_compress_weight_picks_the_smallest_layout():
    generator = torch.Generator().manual_seed(0)
    dense = torch.randn(64, 128, generator=generator).to(torch.bfloat16)
    assert compress_weight(dense) is None  # nothing to gain
    assert compress_weight(dense.view(-1)) is None and compress_weight(dense.to(torch.int8)) is None
    half = dense.clone()
    half.view(-1)[torch.randperm(half.numel(), generator=generator)[: half.numel() // 2]] = 0
    bitmask = compress_weight(half)
    assert set(bitmask) == {"", BITMASK_SUFFIX}
    assert _nbytes(bitmask) / (half.numel() * 2) == pytest.approx(0.5625)  # 0.5 values + 1/16 bitmask
    two_four = dense * nm_mask(dense.float().abs(), 2, 4)
    nm = compress_weight(two_four, (2, 4))
    assert set(nm) == {"", NM_INDEX_SUFFIX} and nm[""].shape == (64, 64)
    assert _nbytes(nm) / (two_four.numel() * 2) == pytest.approx(0.5625)  # 0.5 values + 2 bits per kept value
    assert torch.equal(decompress_weight(nm, two_four.shape, (2, 4)), two_four)
    assert set(compress_weight(half, (2, 4))) == {"", BITMASK_SUFFIX}  # not 2:4: falls back to the bitmask
    four_eight = dense * nm_mask(dense.float().abs(), 4, 8)
    assert set(compress_weight(four_eight, (4, 8))) == {"", BITMASK_SUFFIX}  # 4 bits per value > 1 bit per element
    one_four = dense * nm_mask(dense.float().abs(), 1, 4)
    assert _nbytes(compress_weight(one_four, (1, 4))) / (one_four.numel() * 2) == pytest.approx(0.25 + 1 / 32)
    eight_sixteen = dense * nm_mask(dense.float().abs(), 8, 16)
    assert set(compress_weight(eight_sixteen, (8, 16))) == {"", BITMASK_SUFFIX}  # groups above 8: bitmask
    with pytest.raises(ValueError, match="needs the checkpoint's compression config"):
        decompress_weight(nm, two_four.shape, None)


def _pruned(family: str, pattern: str, dtype=torch.bfloat16):
    model = tiny_model(family, layers=2).to(dtype)
    config = PruningConfig(method="magnitude", **({"pattern": pattern} if ":" in pattern else {"sparsity": 0.5}))
    prune(model, config, progress=False)
    return model


@pytest.mark.parametrize("family,pattern", [("opt", "50%"), ("llama", "2:4"), ("gpt2", "50%"), ("gemma3", "2:4")])
def test_compressed_checkpoint_reloads_with_stock_from_pretrained_bit_identical(tmp_path, family, pattern):
    model = _pruned(family, pattern)
    model.save_pretrained(tmp_path / "dense")
    model.save_pretrained(tmp_path / "compressed", compress=True)
    saved = json.loads((tmp_path / "compressed" / "config.json").read_text())["quantization_config"]
    assert saved["quant_method"] == "pruning_hf" and saved["compression"]["nm"] == ([2, 4] if ":" in pattern else None)
    assert saved["compression"]["compressed_weights"] == sum(len(layer.linears) for layer in model.pruning_report.layers)

    dense = AutoModelForCausalLM.from_pretrained(tmp_path / "dense")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "compressed")
    ids = torch.randint(0, 256, (2, 24))
    assert torch.equal(dense(ids).logits, loaded(ids).logits)
    assert all(torch.equal(value, loaded.state_dict()[name]) for name, value in dense.state_dict().items())
    assert loaded.dtype == torch.bfloat16
    assert getattr(loaded.config, "quantization_config", None) is None  # dense in memory, dense when re-saved
    assert folder_bytes(tmp_path / "compressed") < folder_bytes(tmp_path / "dense")


def test_compressed_tensors_are_stored_values_plus_layout(tmp_path):
    model = _pruned("llama", "2:4")
    model.save_pretrained(tmp_path / "c", compress=True)
    with safe_open(tmp_path / "c" / "model.safetensors", framework="pt") as reader:
        names = set(reader.keys())
        values = reader.get_tensor("model.layers.0.mlp.up_proj.weight")
        index = reader.get_tensor("model.layers.0.mlp.up_proj.weight" + NM_INDEX_SUFFIX)
    assert values.shape == (64, 16) and values.dtype == torch.bfloat16  # (out, in * 2/4)
    assert index.dtype == torch.uint8 and index.numel() == 64 * 16 * 2 // 8
    assert "model.embed_tokens.weight" in names and "model.embed_tokens.weight" + BITMASK_SUFFIX not in names


def test_sharded_and_offloaded_compressed_checkpoint(tmp_path):
    model = _pruned("opt", "50%")
    model.save_pretrained(tmp_path / "c", compress=True, max_shard_size="20KB")
    index = json.loads((tmp_path / "c" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert any(name.endswith(BITMASK_SUFFIX) for name in index["weight_map"])
    assert index["metadata"]["total_size"] < sum(p.numel() * 2 for p in model.parameters())
    model.save_pretrained(tmp_path / "dense")
    dense = AutoModelForCausalLM.from_pretrained(tmp_path / "dense")
    offloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "c", device_map="auto", max_memory={"cpu": 20_000},
                                                     offload_folder=tmp_path / "offload")
    assert "disk" in offloaded.hf_device_map.values()
    ids = torch.randint(0, 256, (1, 16))
    assert torch.equal(dense(ids).logits, offloaded(ids).logits)


def test_stock_transformers_without_pruning_hf_refuses_to_load(tmp_path):
    _pruned("llama", "50%").save_pretrained(tmp_path / "c", compress=True)
    code = "from transformers import AutoModelForCausalLM; import sys; AutoModelForCausalLM.from_pretrained(sys.argv[1])"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "c")], capture_output=True, text=True,
                          env=env, cwd=tmp_path)
    assert done.returncode != 0
    assert "Unknown quantization type, got pruning_hf" in done.stderr
    assert "size mismatch" in done.stderr and "RuntimeError" in done.stderr


def test_failed_compression_leaves_no_checkpoint_and_foreign_quantization_is_refused(tmp_path, monkeypatch):
    import pruning_hf.hf.checkpoint

    model = _pruned("opt", "50%")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pruning_hf.hf.checkpoint, "compress_checkpoint", broken)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(tmp_path / "c", compress=True)
    assert not (tmp_path / "c").exists() and os.listdir(tmp_path) == []
    monkeypatch.undo()
    model.config.quantization_config = {"quant_method": "bitsandbytes_4bit"}
    with pytest.raises(ValueError, match="carries a 'bitsandbytes_4bit' quantization_config"):
        model.save_pretrained(tmp_path / "c", compress=True)
    assert not (tmp_path / "c").exists()


def test_unknown_feature_asks_to_upgrade():
    from pruning_hf.hf.quantizer import PruningHfConfig

    with pytest.raises(ValueError, match=r"feature\(s\) \['future_feature'\].*upgrade pruning_hf"):
        PruningHfConfig(future_feature={"x": 1})
    with pytest.raises(ValueError, match="not a pruning_hf compression record"):
        PruningHfConfig(compression={"format": "other"})


@pytest.mark.slow
def test_real_model_2to4_compressed_checkpoint_is_smaller_and_identical(tmp_path, smollm2_path):
    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.bfloat16)
    prune(model, PruningConfig(method="magnitude", pattern="2:4"), progress=False)
    model.save_pretrained(tmp_path / "dense")
    model.save_pretrained(tmp_path / "compressed", compress=True)
    pruned_bytes = sum(p.numel() * 2 for n, p in model.named_parameters() if n.endswith("proj.weight"))
    saved = folder_bytes(tmp_path / "dense") - folder_bytes(tmp_path / "compressed")
    assert saved == pytest.approx(pruned_bytes * (1 - 0.5625), rel=1e-3)  # every pruned Linear at 0.5625x
    ids = torch.tensor([[1, 504, 3458, 314, 260, 1345, 30, 2]])
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "compressed")
    assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_compressed_checkpoint_loads_in_another_dtype(tmp_path):
    model = _pruned("llama", "2:4")
    model.save_pretrained(tmp_path / "dense")
    model.save_pretrained(tmp_path / "compressed", compress=True)
    dense = AutoModelForCausalLM.from_pretrained(tmp_path / "dense", dtype=torch.float32)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "compressed", dtype=torch.float32)
    assert loaded.dtype == torch.float32
    assert all(torch.equal(value, loaded.state_dict()[name]) for name, value in dense.state_dict().items())


def test_model_card_of_a_compressed_checkpoint_says_how_to_load_it(tmp_path):
    model = _pruned("opt", "50%")
    model.save_pretrained(tmp_path / "c", compress=True)
    model.save_pretrained(tmp_path / "d")
    card = (tmp_path / "c" / "README.md").read_text()
    assert "import pruning_hf  # pip install pruning-hf" in card and "size-mismatch error" in card
    assert "Smaller on disk only" in card
    dense_card = (tmp_path / "d" / "README.md").read_text()
    assert "import pruning_hf" not in dense_card and "any loader works" in dense_card
