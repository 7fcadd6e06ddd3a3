"""2:4 sparse kernels: detection, the CPU / old-GPU fallback, and the swap where a GPU has them."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import pruning_hf.hf.kernels as kernels
from pruning_hf import PruningConfig, enable_2to4_kernels, prune
from pruning_hf.hf.kernels import is_2to4_sparse, semi_structured_candidates

pytestmark = pytest.mark.usefixtures("one_thread")


def _llama_2to4(dtype=torch.bfloat16, targets=None):
    """A Llama whose Linear shapes fit the kernels (multiples of 32 x 64), pruned 2:4."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = AutoModelForCausalLM.from_config(config).to(dtype).eval()
    prune(model, PruningConfig(method="magnitude", pattern="2:4", targets=targets), progress=False)
    return model


def test_is_2to4_sparse():
    weight = torch.tensor([[1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 3.0]])
    assert is_2to4_sparse(weight)
    assert is_2to4_sparse(torch.zeros(4, 8))
    assert not is_2to4_sparse(torch.tensor([[1.0, 1.0, 1.0, 0.0]]))  # 3 non-zeros in a group
    assert not is_2to4_sparse(torch.zeros(4, 6))  # width not a multiple of 4
    assert not is_2to4_sparse(torch.zeros(8))


def test_candidates_name_the_reason_for_every_linear_left_dense():
    model = _llama_2to4(targets=["q_proj", "up_proj", "down_proj"])
    swappable, skipped = semi_structured_candidates(model, require_cuda=False)
    assert sorted(swappable) == sorted(f"model.layers.{i}.{name}" for i in range(2)
                                       for name in ("self_attn.q_proj", "mlp.up_proj", "mlp.down_proj"))
    assert skipped["model.layers.0.self_attn.o_proj"] == "weight is not 2:4 sparse"
    assert skipped["lm_head"] == "weight is not 2:4 sparse"
    _, skipped = semi_structured_candidates(model)  # on CPU: nothing can run the kernels
    assert skipped["model.layers.0.self_attn.q_proj"] == "weight is on cpu, the kernels run on CUDA"
    fp32 = _llama_2to4(torch.float32)
    _, skipped = semi_structured_candidates(fp32, require_cuda=False)
    assert skipped["model.layers.0.mlp.up_proj"] == "dtype float32: the kernels take float16 or bfloat16"


def test_shape_constraint_is_reported():
    model = torch.nn.Sequential(torch.nn.Linear(48, 16, bias=False)).to(torch.float16)
    model[0].weight.data[:, 1::2] = 0
    _, skipped = semi_structured_candidates(model, require_cuda=False)
    assert skipped["0"] == "shape (16, 48) is not a multiple of (32, 64)"


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the fallback of a machine without CUDA")
def test_without_cuda_the_model_is_left_unchanged_with_a_clear_message():
    model = _llama_2to4()
    before = {name: (param, param.detach().clone()) for name, param in model.named_parameters()}
    ids = torch.randint(0, 256, (1, 12))
    logits = model(ids).logits
    with pytest.warns(UserWarning, match=r"need a CUDA GPU with compute capability >= 8.0 .*left unchanged"):
        report = enable_2to4_kernels(model)
    assert report.swapped == [] and report.backend is None
    assert "no CUDA GPU is available" in report.unavailable
    assert "model.layers.0.mlp.up_proj" not in report.skipped  # would be swapped on a suitable GPU
    for name, param in model.named_parameters():
        assert param is before[name][0] and torch.equal(param, before[name][1])
    assert torch.equal(model(ids).logits, logits)


def test_a_gpu_older_than_ampere_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *args: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "Tesla T4")
    backend, reason = kernels.semi_structured_support()
    assert backend is None and reason.endswith("Tesla T4 has 7.5")
    model = _llama_2to4()
    with pytest.warns(UserWarning, match="Tesla T4 has 7.5"):
        assert enable_2to4_kernels(model).swapped == []


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0),
                    reason="needs a CUDA GPU with compute capability >= 8.0")
def test_swap_on_gpu_keeps_outputs():
    model = _llama_2to4(torch.float16).cuda()
    ids = torch.randint(0, 256, (8, 64), device="cuda")
    dense = model(ids).logits
    report = enable_2to4_kernels(model)
    assert len(report.swapped) == 2 * 7 and report.backend in ("cusparselt", "cutlass")
    assert isinstance(model.model.layers[0].mlp.up_proj.weight.data, torch.sparse.SparseSemiStructuredTensor)
    torch.testing.assert_close(model(ids).logits, dense, rtol=2e-2, atol=2e-2)
    assert "already semi-structured" in enable_2to4_kernels(model).skipped.values()
