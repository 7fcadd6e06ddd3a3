"""Determinism, numerical safety and safe loading (the guarantees of the README's "Failure behaviour")."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch
from conftest import tiny_model

from pruning_hf import PruningConfig, prune
from pruning_hf.engine import NonFiniteError, prune_model

SMALL = {"num_samples": 4, "seq_len": 32, "batch_size": 2}


# --- determinism ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("options", [
    dict(method="magnitude", sparsity=0.5),
    dict(method="wanda", sparsity=0.5),
    dict(method="sparsegpt", sparsity=0.5),
    dict(method="sparsegpt", pattern="2:4"),
    dict(method="structured", sparsity=0.25),
    dict(method="wanda", sparsity=0.5, allocation="owl", refine=True),
], ids=lambda o: "-".join(str(v) for v in o.values()))
def test_same_inputs_and_seed_give_bit_identical_weights_on_cpu(options, tokenizer, text_file, one_thread):
    """From calibration text to pruned weights: windows are sampled with the seed, everything else is
    deterministic on CPU, so two runs agree bit for bit (masks included: zeros are where they were)."""
    config = PruningConfig(**options, calibration={"source": str(text_file), "seed": 3, **SMALL})
    runs = []
    for _ in range(2):
        model = tiny_model("llama", layers=3)
        prune(model, config, tokenizer, progress=False)
        runs.append(model.state_dict())
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][name], runs[1][name]) for name in runs[0])


def test_another_seed_samples_other_windows_and_gives_other_weights(tokenizer, text_file, one_thread):
    weights = []
    for seed in (0, 1):
        model = tiny_model("llama")
        prune(model, PruningConfig(method="sparsegpt", sparsity=0.5, calibration={"source": str(text_file),
                                                                                   "seed": seed, **SMALL}),
              tokenizer, progress=False)
        weights.append(model.model.layers[0].mlp.down_proj.weight.clone())
    assert not torch.equal(*weights)


# --- numerical safety ----------------------------------------------------------------------------------
@pytest.mark.parametrize("windows", [
    torch.full((4, 32), 7),                       # constant input: every position sees the same token
    torch.randint(0, 256, (1, 32), generator=torch.Generator().manual_seed(0)).repeat(4, 1),  # duplicated
], ids=["constant", "duplicated"])
def test_sparsegpt_on_rank_deficient_hessians_stays_finite(windows, one_thread, monkeypatch):
    import pruning_hf.methods.sparsegpt as sparsegpt

    used, factor = [], sparsegpt.inverse_hessian_factor
    monkeypatch.setattr(sparsegpt, "inverse_hessian_factor",
                        lambda *args: used.append(factor(*args)[1]) or factor(*args))
    model = tiny_model("llama")
    report = prune_model(model, PruningConfig(method="sparsegpt", sparsity=0.5, dampening=1e-6), windows=windows,
                         progress=False)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert report.sparsity == pytest.approx(0.5, abs=0.01)
    with torch.no_grad():
        assert torch.isfinite(model(windows).logits).all()
    if windows.unique().numel() == 1:  # rank 1: the Cholesky factorisation needed more dampening
        assert max(used) > 1e-6


def _poison(model, name: str) -> None:
    with torch.no_grad():
        model.get_parameter(name).view(-1)[0] = float("nan")


def test_nan_weight_stops_with_the_layer_and_linear_named(one_thread):
    model = tiny_model("llama", layers=3)
    _poison(model, "model.layers.1.self_attn.q_proj.weight")
    with pytest.raises(NonFiniteError, match=r"layer 1, model\.layers\.1\.self_attn\.q_proj: pruning produced "
                                             r"NaN/Inf weights \(the weight already held NaN/Inf before pruning\)"):
        prune_model(model, PruningConfig(method="magnitude", sparsity=0.5), progress=False)


def test_nan_activations_stop_with_the_layer_and_parameter_named(one_thread):
    model = tiny_model("llama", layers=3)
    _poison(model, "model.layers.1.post_attention_layernorm.weight")  # not pruned: weights stay finite
    windows = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    with pytest.raises(NonFiniteError, match=r"decoder layer 1 produced NaN/Inf activations; non-finite parameters "
                                             r"in it: post_attention_layernorm.weight"):
        prune_model(model, PruningConfig(method="wanda", sparsity=0.5), windows=windows, progress=False)


# --- safe loading --------------------------------------------------------------------------------------
def test_every_yaml_load_in_the_package_is_safe():
    package = Path(__file__).parents[1] / "pruning_hf"
    unsafe = re.compile(r"yaml\.(load|unsafe_load|full_load|load_all)\(|Loader=yaml\.(Loader|FullLoader|UnsafeLoader)")
    offenders = [f"{path}:{n}" for path in package.rglob("*.py")
                 for n, line in enumerate(path.read_text().splitlines(), 1) if unsafe.search(line)]
    assert offenders == []


def test_remote_code_is_off_unless_asked(make_checkpoint, monkeypatch):
    import transformers

    from pruning_hf.cli import main

    seen = []

    def record(name, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        raise RuntimeError("stop after recording")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", record)
    folder = make_checkpoint("llama")
    for extra in ([], ["--trust-remote-code"]):
        with pytest.raises(RuntimeError, match="stop after recording"):
            main(["prune", str(folder), "--method", "magnitude", "--sparsity", "0.5", "--output",
                  str(folder.parent / "out"), *extra])
    assert seen == [False, True]


FAKE_TOKEN = "hf_PruningHfFakeToken0123456789abcdefXYZ"


def test_hub_token_is_never_logged_or_written(make_checkpoint, text_file, tmp_path, monkeypatch, capsys, caplog):
    """prune (with evaluation), card, sweep and push run with HF_TOKEN set; no file they write, no
    output line and no log record contains it."""
    from huggingface_hub import constants
    from test_hub import FakeHub

    from pruning_hf.cli import main

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    model = make_checkpoint("llama")
    out = tmp_path / "pruned"
    calibration = ["--calibration", str(text_file), "--num-samples", "2", "--seq-len", "32", "--no-progress"]
    assert main(["prune", str(model), "--method", "wanda", "--sparsity", "0.5", *calibration, "--eval-text",
                 str(text_file), "--eval-seq-len", "32", "--eval-windows", "2", "--output", str(out)]) == 0
    assert main(["card", str(out), "--repo-id", "alice/pruned"]) == 0
    assert main(["sweep", str(model), "--methods", "magnitude", "--sparsities", "0.5", *calibration,
                 "--eval-text", str(text_file), "--eval-seq-len", "32", "--eval-windows", "2", "--no-efficiency",
                 "--no-energy", "--budget", "", "--output", str(tmp_path / "sweep")]) == 0
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        assert main(["push", str(out), "alice/pruned"]) == 0
    assert hub.auth == {f"Bearer {FAKE_TOKEN}"}  # the token was used ...
    captured = capsys.readouterr()
    assert FAKE_TOKEN not in captured.out + captured.err  # ... but never shown,
    assert FAKE_TOKEN not in caplog.text
    written = [path for path in tmp_path.rglob("*") if path.is_file() and FAKE_TOKEN.encode() in path.read_bytes()]
    assert written == []  # ... nor written
    assert (out / "README.md").is_file() and (tmp_path / "sweep" / "sweep.json").is_file()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_all_finite_finds_every_nan_inf_and_survives_a_sum_overflow(dtype):
    from pruning_hf.utils.checks import all_finite

    x = torch.randn(64, 32).to(dtype)
    assert all_finite(x)
    for bad in (float("nan"), float("inf"), -float("inf")):
        y = x.clone()
        y[17, 5] = bad
        assert not all_finite(y)
    both = x.clone()
    both[0, 0], both[1, 1] = float("inf"), -float("inf")  # they cancel to NaN in the sum, still caught
    assert not all_finite(both)
    huge = torch.full((4, 4), torch.finfo(torch.float32).max)  # finite items whose float32 sum overflows
    assert all_finite(huge)
