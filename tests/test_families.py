"""Every family the README lists as supported, as a tiny random model with 4 decoder layers.

Each family is pruned with magnitude 50%, Wanda 50%, SparseGPT 2:4 and depth (one layer removed), plus
structured width pruning where the family is known (MLP neurons and attention heads); every result is
saved, then reloaded with stock transformers (``pruning_hf`` not imported) in a fresh process, one per
family, which must reproduce the pruned model's logits exactly.

Public API only: ``pruning_hf.prune`` and ``save_pretrained``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers as tf

from pruning_hf import PruningConfig, prune

LAYERS = 4
VOCAB = 260
IDS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))
WINDOWS = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))


def family_config(family: str):
    """Tiny configs (widths divisible by 4 for 2:4) shaped like each family's real checkpoints."""
    common = dict(vocab_size=VOCAB, num_hidden_layers=LAYERS, max_position_embeddings=256)
    gqa = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2)
    if family == "opt":
        return tf.OPTConfig(hidden_size=32, ffn_dim=64, num_attention_heads=4, word_embed_proj_dim=32, **common)
    if family == "llama":
        return tf.LlamaConfig(**gqa, **common)
    if family == "smollm2":  # SmolLM2-135M: Llama with 3 KV groups of 3 query heads, tied embeddings
        return tf.LlamaConfig(hidden_size=48, intermediate_size=64, num_attention_heads=6, num_key_value_heads=3,
                              tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1e5},
                              **common)
    if family == "mistral":
        return tf.MistralConfig(**gqa, sliding_window=16, **common)
    if family == "qwen2":
        return tf.Qwen2Config(**gqa, **common)
    if family == "qwen3":
        return tf.Qwen3Config(**gqa, head_dim=8, **common)
    if family == "gemma2":
        return tf.Gemma2Config(**gqa, head_dim=8, sliding_window=16, **common)
    if family == "gemma3":
        return tf.Gemma3TextConfig(**gqa, head_dim=8, sliding_window=16, **common)
    if family == "gpt2":
        return tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=LAYERS, n_head=4, n_positions=256,
                             bos_token_id=256, eos_token_id=256)
    if family == "falcon":
        return tf.FalconConfig(hidden_size=32, num_attention_heads=4, **common)
    if family == "phi3":
        return tf.Phi3Config(**gqa, pad_token_id=0, bos_token_id=1, eos_token_id=2, **common)
    if family == "gpt_neox":
        return tf.GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, **common)
    raise ValueError(family)


#: families with a structured-pruning layout (attention / MLP projections known to pruning_hf)
STRUCTURED = ("opt", "llama", "smollm2", "mistral", "qwen2", "qwen3", "gemma2", "gemma3")
#: decoder-only families walked through the generic path (optimum's block discovery)
GENERIC = ("falcon", "phi3", "gpt_neox")
FAMILIES = (*STRUCTURED, "gpt2", *GENERIC)

METHODS = {
    "magnitude": dict(method="magnitude", sparsity=0.5),
    "wanda": dict(method="wanda", sparsity=0.5),
    "sparsegpt-2of4": dict(method="sparsegpt", pattern="2:4"),
    "depth": dict(method="depth", num_layers=1),
    "structured-mlp": dict(method="structured", sparsity=0.5, target="mlp"),
    "structured-heads": dict(method="structured", sparsity=0.5, target="heads", importance="magnitude"),
}


def variants(family: str) -> list[str]:
    names = ["magnitude", "wanda", "sparsegpt-2of4", "depth"]
    if family in STRUCTURED:
        names.append("structured-mlp")
        if family != "opt":  # OPT derives head_dim from the head count: fewer heads need pruning_hf to reload
            names.append("structured-heads")
    return names


#: A fresh interpreter that imports only torch and transformers, then forks one process per family; each
#: reloads that family's results with stock ``from_pretrained`` and compares the logits bit for bit. (Forking
#: from one clean interpreter costs one import of torch + transformers instead of one per family.)
_RELOADER = textwrap.dedent("""
    import json, os, sys
    import torch
    import transformers.modeling_utils  # the heavy imports once, before forking
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)

    def check(folders):
        results = {}
        for name, folder in folders.items():
            try:
                model = AutoModelForCausalLM.from_pretrained(folder).eval()
                expected = torch.load(folder + "/expected.pt")
                with torch.no_grad():
                    logits = model(expected["ids"]).logits
                results[name] = "same" if torch.equal(logits, expected["logits"]) else \\
                    f"logits differ by up to {(logits - expected['logits']).abs().max().item():.3g}"
            except Exception as err:
                results[name] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        assert "pruning_hf" not in sys.modules
        return results

    report = {}
    for family, folders in json.loads(open(sys.argv[1]).read()).items():
        out = sys.argv[1] + "." + family
        pid = os.fork()
        if pid == 0:  # the family's own process
            code = 1
            try:
                with open(out, "w") as handle:
                    json.dump(check(folders), handle)
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        report[family] = json.load(open(out)) if status == 0 else {"<reload process>": f"exit status {status}"}
    print(json.dumps(report))
""")


def _prune_family(family: str, root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Prune a fresh tiny model of ``family`` with every variant; save each with its expected logits.

    Returns ``(folders to reload, failures while pruning)``.
    """
    folders, failures = {}, {}
    for name in variants(family):
        torch.manual_seed(0)
        model = tf.AutoModelForCausalLM.from_config(family_config(family)).eval()
        try:
            prune(model, PruningConfig(**METHODS[name], calibration={"batch_size": 2}), windows=WINDOWS,
                  progress=False)
            folder = root / family / name
            model.save_pretrained(folder)
            with torch.no_grad():
                torch.save({"ids": IDS, "logits": model(IDS).logits}, folder / "expected.pt")
            folders[name] = str(folder)
        except Exception as err:
            failures[name] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return folders, failures


@pytest.fixture(scope="module")
def reloaded(tmp_path_factory) -> dict[str, dict[str, str]]:
    """``{family: {variant: "same" | what went wrong}}``: prune everything, then reload each family's results
    in its own fresh process (see ``_RELOADER``)."""
    root = tmp_path_factory.mktemp("families")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the children run with one thread: same kernels, same bits
    try:
        pruned = {family: _prune_family(family, root) for family in FAMILIES}
    finally:
        torch.set_num_threads(threads)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps({family: folders for family, (folders, _) in pruned.items() if folders}))
    done = subprocess.run([sys.executable, "-c", _RELOADER, str(manifest)], capture_output=True, text=True, env=env,
                          cwd=root, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = {family: dict(failures) for family, (_, failures) in pruned.items()}
    for family, checked in json.loads(done.stdout.strip().splitlines()[-1]).items():
        results[family].update(checked)
    return results


@pytest.mark.parametrize("family", FAMILIES)
def test_every_method_prunes_and_reloads_with_stock_transformers(family, reloaded):
    assert reloaded[family] == {name: "same" for name in variants(family)}


@pytest.mark.parametrize("family", ["gpt2", *GENERIC])
def test_structured_refuses_families_without_a_layout_before_touching_the_model(family):
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(family_config(family)).eval()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with pytest.raises(ValueError, match=f"structured pruning of 'mlp' is not available for model_type="
                                         f"'{model.config.model_type}'"):
        prune(model, PruningConfig(method="structured", sparsity=0.5), windows=WINDOWS, progress=False)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_depth_on_gpt2_removes_the_lowest_influence_layer_and_renumbers_the_rest():
    """GPT-2's Linears are Conv1D (transposed weights): depth pruning used to crash after dropping layers."""
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(family_config("gpt2")).eval()
    report = prune(model, PruningConfig(method="depth", num_layers=2, calibration={"batch_size": 2}),
                   windows=WINDOWS, progress=False)
    assert len(report.details["removed_layers"]) == 2
    assert model.config.n_layer == len(model.transformer.h) == 2
    assert [block.attn.layer_idx for block in model.transformer.h] == [0, 1]
    assert "quantization_config" not in model.config.to_dict()


def _block_influence_from_hidden_states(model, windows: torch.Tensor) -> list[float]:
    """ShortGPT block influence from transformers' own ``output_hidden_states`` (layers 0 .. L-2: the last
    entry is after the final norm)."""
    sums, count = None, 0
    with torch.no_grad():
        for batch in windows.split(2):
            hidden = model(batch, output_hidden_states=True).hidden_states
            cosines = torch.stack([torch.nn.functional.cosine_similarity(hidden[i].float(), hidden[i + 1].float(),
                                                                         dim=-1).sum() for i in range(len(hidden) - 2)])
            sums = cosines if sums is None else sums + cosines
            count += batch.numel()
    return (1 - sums / count).tolist()


@pytest.mark.parametrize("family", ["falcon", "gemma3", "gpt2"])
def test_captured_layer_inputs_are_what_the_model_feeds_its_layers(family):
    """The input capture replaces decoder layers by recorders; whatever a family's layer loop expects from a
    layer (a tensor, a tuple), every layer must see the hidden states the dense model gives it: depth
    pruning's block influence, measured on the captured inputs, equals the one from ``output_hidden_states``."""
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(family_config(family)).eval()
    expected = _block_influence_from_hidden_states(model, WINDOWS)
    report = prune(model, PruningConfig(method="depth", num_layers=1, calibration={"batch_size": 2}),
                   windows=WINDOWS, progress=False)
    assert report.details["block_influence"][: LAYERS - 1] == pytest.approx(expected, abs=1e-5)
