"""AutoPrunedModel: prune on load, atomic save, stock reload, reload without re-pruning, load errors."""

import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from pruning_hf import AutoPrunedModel, PruningConfig
from pruning_hf.hf.loading import ModelLoadError
from pruning_hf.utils.storage import OutputPathError


def config_for(text_file, **kwargs):
    kwargs.setdefault("method", "sparsegpt")
    kwargs.setdefault("pattern", "2:4")
    return PruningConfig(calibration={"source": str(text_file), "num_samples": 4, "seq_len": 32}, **kwargs)


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("family", ["opt", "llama", "gemma3"])
def test_prune_save_and_stock_reload_give_identical_logits(family, make_checkpoint, text_file, tmp_path):
    source = make_checkpoint(family)
    cfg = config_for(text_file)
    model = AutoPrunedModel.from_pretrained(source, pruning=cfg, progress=False)
    assert model.pruning_config == cfg and model.pruning_report.sparsity == pytest.approx(0.5)
    ids = torch.randint(0, 256, (2, 20))
    out = tmp_path / "pruned"
    model.save_pretrained(out)
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "pruning_report.json"} <= files
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp folders left behind
    stock = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(logits(stock, ids), logits(model, ids), atol=1e-5, rtol=0)
    assert json.loads((out / "config.json").read_text())["pruning_config"]["method"] == "sparsegpt"
    report = json.loads((out / "pruning_report.json").read_text())
    assert report["sparsity"] == pytest.approx(0.5) and len(report["layers"]) == 2
    assert all("sparsity" in info for layer in report["layers"] for info in layer["linears"].values())


def test_reload_knows_its_config_and_does_not_prune_again(make_checkpoint, text_file, tmp_path, monkeypatch):
    model = AutoPrunedModel.from_pretrained(make_checkpoint("llama"), pruning=config_for(text_file, method="wanda",
                                            pattern="unstructured", sparsity=0.3), progress=False)
    model.save_pretrained(tmp_path / "out")
    import pruning_hf.hf.pruning

    def fail(*args, **kwargs):
        raise AssertionError("reloading must not prune")
    monkeypatch.setattr(pruning_hf.hf.pruning, "prune_model", fail)
    reloaded = AutoPrunedModel.from_pretrained(tmp_path / "out")
    assert reloaded.pruning_config == model.pruning_config
    assert reloaded.pruning_report.sparsity == pytest.approx(model.pruning_report.sparsity)
    for (name, a), b in zip(model.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(a, b), name
    assert reloaded.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3, do_sample=False).shape == (1, 6)


def test_dense_model_loads_without_pruning_config(make_checkpoint):
    model = AutoPrunedModel.from_pretrained(make_checkpoint("opt"))
    assert model.pruning_config is None and model.pruning_report is None and model.tokenizer is not None


def test_failed_save_keeps_the_previous_checkpoint(make_checkpoint, text_file, tmp_path, monkeypatch):
    model = AutoPrunedModel.from_pretrained(make_checkpoint("llama"), pruning=config_for(text_file), progress=False)
    out = tmp_path / "ckpt"
    model.save_pretrained(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(*args, **kwargs):
        raise OSError("disk full (simulated)")
    monkeypatch.setattr(model.tokenizer, "save_pretrained", broken)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.zero_()
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ckpt", "tiny-llama"])


def test_save_replaces_an_existing_checkpoint_whole(make_checkpoint, text_file, tmp_path):
    model = AutoPrunedModel.from_pretrained(make_checkpoint("llama"), pruning=config_for(text_file), progress=False)
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "stale.bin").write_text("old")
    model.save_pretrained(out)
    assert not (out / "stale.bin").exists() and (out / "model.safetensors").is_file()
    assert oct(os.stat(out).st_mode & 0o777) != "0o700"  # normal permissions, not mkdtemp's


def test_save_refuses_foreign_folder_and_file_paths(make_checkpoint, tmp_path):
    model = AutoPrunedModel.from_pretrained(make_checkpoint("opt"))
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    with pytest.raises(OutputPathError, match="not empty and holds no checkpoint"):
        model.save_pretrained(foreign)
    assert (foreign / "notes.txt").read_text() == "precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputPathError, match="is a file"):
        model.save_pretrained(tmp_path / "file")


@pytest.mark.parametrize("setup,message", [
    (lambda p: p / "nope", "does not exist"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "has no config.json"),
    (lambda p: (p / "f.txt").write_text("x") and p / "f.txt", "is a file"),
])
def test_bad_model_paths_raise_clear_errors(tmp_path, setup, message):
    with pytest.raises(ModelLoadError, match=message):
        AutoPrunedModel.from_pretrained(setup(tmp_path))


def test_non_causal_architectures_are_refused(tmp_path, tokenizer, text_file):
    from transformers import BertConfig, BertLMHeadModel, T5Config

    from pruning_hf.models.architectures import UnsupportedModelError

    T5Config(vocab_size=50, d_model=16, num_layers=1, num_heads=2, d_ff=32).save_pretrained(tmp_path / "t5")
    with pytest.raises(ModelLoadError, match="model_type='t5', which is not a decoder-only causal LM"):
        AutoPrunedModel.from_pretrained(tmp_path / "t5")
    bert = BertLMHeadModel(BertConfig(vocab_size=300, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=32, is_decoder=True))
    bert.save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    with pytest.raises(UnsupportedModelError, match="cannot find the decoder layers.*supported model types: gemma"):
        AutoPrunedModel.from_pretrained(tmp_path / "bert", pruning=config_for(text_file, method="magnitude"))


def test_pickle_only_checkpoint_is_refused(make_checkpoint, tmp_path):
    folder = make_checkpoint("opt")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_bytes((folder / "config.json").read_bytes())
    torch.save(AutoModelForCausalLM.from_pretrained(folder).state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="refuses pickle checkpoints"):
        AutoPrunedModel.from_pretrained(tmp_path / "pickled")


def test_truncated_safetensors_is_reported(make_checkpoint):
    folder = make_checkpoint("opt")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="corrupted or truncated"):
        AutoPrunedModel.from_pretrained(folder)


def test_bad_calibration_source_fails_before_the_model_loads(make_checkpoint, tmp_path, monkeypatch):
    import transformers

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("model was loaded"))
    cfg = PruningConfig(method="wanda", sparsity=0.5, calibration={"source": str(tmp_path / "missing.txt")})
    from pruning_hf.data.text import DataSourceError

    with pytest.raises(DataSourceError, match="does not exist"):
        AutoPrunedModel.from_pretrained(make_checkpoint("opt"), pruning=cfg)


def test_preflight_reads_the_config_of_the_revision_and_with_the_token_it_loads(make_checkpoint, monkeypatch):
    """Calibration windows are sized from the config of the revision being loaded, read with the same token."""
    import transformers

    from pruning_hf.hf.loading import preflight

    calls = []
    original = transformers.AutoConfig.from_pretrained

    def record(name, **kwargs):
        calls.append(kwargs)
        return original(name, trust_remote_code=kwargs.get("trust_remote_code", False))

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", record)
    cfg = PruningConfig(method="wanda", sparsity=0.5, calibration={"num_samples": 2, "seq_len": 32})
    ready = preflight(make_checkpoint("llama"), hf_kwargs={"revision": "v2", "token": "hf_test"}, pruning=cfg)
    assert ready.windows.shape == (2, 32)
    assert calls and all(call.get("revision") == "v2" and call.get("token") == "hf_test" for call in calls)
