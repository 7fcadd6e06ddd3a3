"""2:4 sparse kernels vs dense on a GPU: OPT-1.3B shapes, prefill and decode, batch 1 / 8 / 32.

    python benchmarks/sparse_kernels.py [--quick]

Needs a CUDA GPU with compute capability >= 8.0 (Ampere or newer). Anywhere else it prints why it
skipped, writes that reason to benchmarks/results/sparse_kernels.json and exits 0.

1. Linear layers: every Linear shape of OPT-1.3B (q/k/v/out 2048x2048, fc1 8192x2048, fc2
   2048x8192) and the 10240x3072 layer of the published ~1.38x (A100), fp16, random weights
   magnitude-pruned 2:4; decode = ``batch`` tokens, prefill = ``batch x 512`` tokens. Median of
   CUDA-synchronised timings after warm-up, dense and 2:4 in the same process.
2. Whole model: a random-init OPT-1.3B-shaped model in fp16 pruned 2:4 with pruning_hf (magnitude),
   dense kernels vs :func:`pruning_hf.enable_2to4_kernels`: prefill latency (batch x 512 tokens)
   and greedy decode tokens/s (64 new tokens after a 32-token prompt).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import write_results  # noqa: E402

OPT_13B_LINEARS = [("q/k/v/out_proj", 2048, 2048), ("fc1", 8192, 2048), ("fc2", 2048, 8192)]
REFERENCE_LINEAR = ("reference (A100 1.38x)", 10240, 3072)
PREFILL_TOKENS_PER_SEQUENCE = 512


def gpu_seconds(function, warmup: int = 3, repeats: int = 10) -> float:
    """Median wall time of ``function()`` with the GPU synchronised around each call."""
    for _ in range(warmup):
        function()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def pruned_2to4(out_features: int, in_features: int) -> torch.Tensor:
    from pruning_hf.sparsity.masks import nm_mask

    weight = torch.randn(out_features, in_features, device="cuda", dtype=torch.float16)
    return weight * nm_mask(weight.abs(), 2, 4)


@torch.no_grad()
def linear_rows(batches: list[int], repeats: int) -> list[dict]:
    from torch.sparse import to_sparse_semi_structured

    rows = []
    for name, out_features, in_features in OPT_13B_LINEARS + [REFERENCE_LINEAR]:
        weight = pruned_2to4(out_features, in_features)
        sparse = to_sparse_semi_structured(weight)
        for phase, per_sequence in (("decode", 1), ("prefill", PREFILL_TOKENS_PER_SEQUENCE)):
            for batch in batches:
                x = torch.randn(batch * per_sequence, in_features, device="cuda", dtype=torch.float16)
                dense_s = gpu_seconds(lambda: torch.nn.functional.linear(x, weight), repeats=repeats)
                sparse_s = gpu_seconds(lambda: torch.nn.functional.linear(x, sparse), repeats=repeats)
                error = (torch.nn.functional.linear(x, sparse) - torch.nn.functional.linear(x, weight)).abs().max()
                rows.append({"layer": name, "shape": f"{out_features}x{in_features}", "phase": phase,
                             "batch": batch, "tokens": batch * per_sequence, "dense_ms": dense_s * 1e3,
                             "sparse_ms": sparse_s * 1e3, "speedup": dense_s / sparse_s,
                             "max_abs_error": float(error)})
    return rows


@torch.no_grad()
def model_rows(batches: list[int], repeats: int, new_tokens: int) -> tuple[list[dict], dict]:
    from transformers import AutoModelForCausalLM, OPTConfig

    from pruning_hf import PruningConfig, enable_2to4_kernels, prune

    torch.manual_seed(0)
    config = OPTConfig(vocab_size=50272, hidden_size=2048, ffn_dim=8192, num_hidden_layers=24,
                       num_attention_heads=32, word_embed_proj_dim=2048, max_position_embeddings=2048)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float16).cuda().eval()
    prune(model, PruningConfig(method="magnitude", pattern="2:4"), progress=False)
    prompts = {batch: torch.randint(0, config.vocab_size, (batch, 32), device="cuda") for batch in batches}
    prefill = {batch: torch.randint(0, config.vocab_size, (batch, PREFILL_TOKENS_PER_SEQUENCE), device="cuda")
               for batch in batches}

    def measure() -> dict:
        timings = {}
        for batch in batches:
            timings[("prefill", batch)] = gpu_seconds(lambda: model(input_ids=prefill[batch], use_cache=False),
                                                      warmup=2, repeats=repeats)
            decode_s = gpu_seconds(lambda: model.generate(prompts[batch], max_new_tokens=new_tokens,
                                                          min_new_tokens=new_tokens, do_sample=False),
                                   warmup=1, repeats=max(3, repeats // 3))
            timings[("decode", batch)] = decode_s
        return timings

    dense = measure()
    report = enable_2to4_kernels(model)
    sparse = measure()
    rows = []
    for (phase, batch), dense_s in dense.items():
        sparse_s = sparse[(phase, batch)]
        row = {"phase": phase, "batch": batch, "dense_s": dense_s, "sparse_s": sparse_s, "speedup": dense_s / sparse_s}
        if phase == "decode":
            row.update(dense_tokens_per_s=batch * new_tokens / dense_s, sparse_tokens_per_s=batch * new_tokens / sparse_s)
        rows.append(row)
    return rows, {"swapped_linears": len(report.swapped), "backend": report.backend}


def hardware() -> dict:
    info = {"platform": platform.platform()}
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(), capability=".".join(map(str, torch.cuda.get_device_capability())),
                    cuda=torch.version.cuda,
                    cusparselt=torch.backends.cusparselt.version() if torch.backends.cusparselt.is_available() else None)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Linear layers only, fewer repeats")
    args = parser.parse_args(argv)
    from pruning_hf.hf.kernels import semi_structured_support

    backend, unavailable = semi_structured_support()
    if unavailable:
        print(f"skipped: {unavailable}. Run this benchmark on an Ampere-or-newer NVIDIA GPU.")
        write_results("sparse_kernels", {"skipped": unavailable, "hardware": hardware()}, [])
        return 0
    from torch.sparse import SparseSemiStructuredTensor

    SparseSemiStructuredTensor._FORCE_CUTLASS = backend == "cutlass"
    batches = [1, 8, 32]
    repeats = 5 if args.quick else 20
    result = {"hardware": hardware(), "backend": backend, "linear": linear_rows(batches, repeats), "model": []}
    print(f"## 2:4 sparse vs dense, fp16, {result['hardware']['gpu']} ({backend})\n")
    print("| layer | shape | phase | batch | tokens | dense ms | 2:4 ms | speedup |\n|---|---|---|---|---|---|---|---|")
    for row in result["linear"]:
        print(f"| {row['layer']} | {row['shape']} | {row['phase']} | {row['batch']} | {row['tokens']} | "
              f"{row['dense_ms']:.3f} | {row['sparse_ms']:.3f} | {row['speedup']:.2f}x |")
    if not args.quick:
        result["model"], result["model_swap"] = model_rows(batches, repeats=10, new_tokens=64)
        print(f"\n### OPT-1.3B-shaped model (random fp16, 2:4 magnitude), "
              f"{result['model_swap']['swapped_linears']} Linear layers on sparse kernels\n")
        print("| phase | batch | dense | 2:4 | speedup |\n|---|---|---|---|---|")
        for row in result["model"]:
            if row["phase"] == "decode":
                print(f"| decode (64 tokens) | {row['batch']} | {row['dense_tokens_per_s']:.1f} tok/s | "
                      f"{row['sparse_tokens_per_s']:.1f} tok/s | {row['speedup']:.2f}x |")
            else:
                print(f"| prefill ({PREFILL_TOKENS_PER_SEQUENCE} tokens each) | {row['batch']} | "
                      f"{row['dense_s'] * 1e3:.1f} ms | {row['sparse_s'] * 1e3:.1f} ms | {row['speedup']:.2f}x |")
    setup = {"hardware": result["hardware"], "backend": backend, "dtype": "float16", "batches": batches,
             "prefill_tokens_per_sequence": PREFILL_TOKENS_PER_SEQUENCE, "model_swap": result.get("model_swap")}
    write_results("sparse_kernels", setup, [{"table": "linear", **row} for row in result["linear"]] +
                  [{"table": "model", **row} for row in result["model"]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
