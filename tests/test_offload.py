"""Pruning models that do not fit in memory: accelerate disk offload, one decoder layer at a time."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import tiny_model
from pruning_hf import PruningConfig
from pruning_hf.models.devices import is_offloaded, onloaded, write_weight
from pruning_hf.engine import prune_model

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def _state(model) -> dict[str, torch.Tensor]:
    """Every parameter of a (possibly offloaded) model as CPU tensors."""
    with onloaded([model]):
        return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _offloaded(folder: Path, budget_fraction: float):
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    return AutoModelForCausalLM.from_pretrained(folder, device_map="auto", max_memory={"cpu": int(size * budget_fraction)},
                                                offload_folder=folder / "offload")


@pytest.mark.parametrize("family,config,storage,budget", [
    ("opt", dict(method="wanda", sparsity=0.5), "cpu", 0.5),
    ("llama", dict(method="sparsegpt", sparsity=0.5), "disk", 0.5),
    ("gemma3", dict(method="sparsegpt", pattern="2:4"), "cpu", 0.1),
    ("gpt2", dict(method="magnitude", sparsity=0.6, scope="global"), "cpu", 0.5),
])
def test_offloaded_pruning_equals_in_memory_bit_for_bit(tmp_path, family, config, storage, budget):
    folder = tmp_path / family
    tiny_model(family, layers=4).save_pretrained(folder)
    cfg = PruningConfig(**config, calibration={"batch_size": 2})
    windows = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))

    reference = AutoModelForCausalLM.from_pretrained(folder)
    prune_model(reference, cfg, windows=windows, progress=False)
    offloaded = _offloaded(folder, budget)
    assert "disk" in offloaded.hf_device_map.values()
    report = prune_model(offloaded, cfg, windows=windows, progress=False, activation_storage=storage)

    assert report.sparsity > 0.45
    expected, got = reference.state_dict(), _state(offloaded)
    assert expected.keys() == got.keys()
    assert [name for name in expected if not torch.equal(expected[name], got[name])] == []
    ids = windows[:2]
    assert torch.equal(reference(ids).logits, offloaded(ids).logits)  # the weights map holds the pruned weights
    assert not any(p.device.type != "meta" for m in offloaded.modules() if is_offloaded(m) for p in m.parameters(False))


def test_onloaded_loads_a_layer_once_and_write_weight_reaches_the_disk_copy(tmp_path):
    folder = tmp_path / "opt"
    tiny_model("opt", layers=2).save_pretrained(folder)
    checkpoint_bytes = (folder / "model.safetensors").read_bytes()
    model = _offloaded(folder, 0.01)
    layer = model.model.decoder.layers[1]
    fc1 = layer.fc1
    assert is_offloaded(fc1) and fc1.weight.device.type == "meta"
    reads = []
    weights_map = fc1._hf_hook.weights_map
    original_getitem = type(weights_map).__getitem__

    def counting_getitem(self, key):
        reads.append(key)
        return original_getitem(self, key)

    type(weights_map).__getitem__ = counting_getitem
    try:
        with onloaded([layer]):
            assert fc1.weight.device.type == "cpu"
            reads.clear()
            layer.fc1(torch.randn(1, 32))
            layer.fc1(torch.randn(1, 32))
            assert reads == []  # forward calls reuse the loaded weights instead of reading the disk again
            write_weight(fc1, torch.zeros(64, 32))
    finally:
        type(weights_map).__getitem__ = original_getitem
    assert fc1.weight.device.type == "meta"
    with onloaded([fc1]):
        assert torch.equal(fc1.weight, torch.zeros(64, 32))
    assert (folder / "model.safetensors").read_bytes() == checkpoint_bytes  # the user's checkpoint is untouched


def test_activation_storage_disk_keeps_files_only_for_the_current_layer(tmp_path):
    from pruning_hf.engine.capture import CapturedInputs

    captured = CapturedInputs(num_layers=2, storage="disk")
    first = [captured.store(torch.full((1, 2, 4), float(i))) for i in range(3)]
    assert all(isinstance(item, str) and os.path.isfile(item) for item in first)
    assert torch.equal(captured.load(first[2], torch.device("cpu")), torch.full((1, 2, 4), 2.0))
    captured.hidden = first
    captured.advance([captured.store(torch.zeros(1, 2, 4))])
    assert not any(os.path.exists(item) for item in first)
    assert len(os.listdir(os.path.dirname(captured.hidden[0]))) == 1


def test_peak_rss_of_offloaded_pruning_is_bounded_by_one_layer(tmp_path):
    """Measured in a fresh process (benchmarks/scale.py worker) so ru_maxrss is this run's own."""
    from transformers import OPTConfig

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from scale import run_worker

    torch.manual_seed(0)
    config = OPTConfig(vocab_size=260, hidden_size=512, ffn_dim=2048, num_hidden_layers=8, num_attention_heads=8,
                       word_embed_proj_dim=512, max_position_embeddings=128)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "opt8")
    # glibc's dynamic mmap threshold would keep freed multi-MB blocks in the heap (fragmentation, not
    # live memory); a fixed threshold returns them, so RSS shows what the engine really holds.
    result = run_worker(tmp_path / "opt8", "offload", samples=2, seq_len=64, threads=1,
                        env={"MALLOC_MMAP_THRESHOLD_": str(2 ** 20)})
    layer, layers = result["layer_bytes"], result["num_layers"]
    bound = 4 * layer + 4 * result["activation_bytes"]  # one layer's weights + scores/masks + activations
    assert result["disk_entries"] >= 1
    assert (layers - 1) * layer > bound  # holding the model (in-memory pruning) would break the bound
    assert result["peak_above_start"] <= bound, result
    # the other layers cost (almost) nothing: same peak as pruning a one-layer model of the same width
    assert result["peak_above_start"] - result["one_layer_peak_above_start"] <= layer, result


def test_bad_activation_storage_is_rejected_before_work():
    model = tiny_model("opt")
    with pytest.raises(ValueError, match="activation_storage='dsk' is neither 'disk' nor a torch device"):
        prune_model(model, PruningConfig(method="magnitude", sparsity=0.5), activation_storage="dsk")


def test_cli_prunes_an_offloaded_model_and_saves_it_compressed(make_checkpoint, tmp_path, capsys):
    from pruning_hf.cli import main

    checkpoint = make_checkpoint("llama")
    common = ["prune", str(checkpoint), "--method", "magnitude", "--sparsity", "0.5", "--no-progress"]
    assert main(common + ["--output", str(tmp_path / "memory")]) == 0
    assert main(common + ["--max-memory", "cpu=20KB", "--offload-folder", str(tmp_path / "offload"),
                          "--activation-storage", "disk", "--compress", "--output", str(tmp_path / "offloaded")]) == 0
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "memory")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "offloaded")
    assert all(torch.equal(v, reloaded.state_dict()[k]) for k, v in reference.state_dict().items())
    assert main(common + ["--activation-storage", "gpu0", "--output", str(tmp_path / "x")]) == 2
    assert "activation_storage='gpu0' is neither 'disk' nor a torch device" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(common + ["--max-memory", "8GiB", "--output", str(tmp_path / "y")])
    assert "'8GiB' is not DEVICE=AMOUNT" in capsys.readouterr().err


def test_cpu_offloaded_weights_map_receives_the_pruned_weights():
    """accelerate.cpu_offload keeps weights in a plain dict map (how CPU offload works on GPU machines)."""
    from accelerate import cpu_offload

    cfg = PruningConfig(method="sparsegpt", sparsity=0.5, calibration={"batch_size": 2})
    windows = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    reference = tiny_model("llama", layers=3)
    prune_model(reference, cfg, windows=windows, progress=False)
    model = cpu_offload(tiny_model("llama", layers=3), execution_device=torch.device("cpu"))
    assert isinstance(model.model.layers[1].mlp.up_proj._hf_hook.weights_map.dataset, dict)
    prune_model(model, cfg, windows=windows, progress=False)
    assert torch.equal(reference(windows).logits, model(windows).logits)
