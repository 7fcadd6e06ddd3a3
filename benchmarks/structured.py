"""Structured pruning: is a model with X% of its parameters removed really faster, and what does it cost?

    nice -n 10 python benchmarks/structured.py [--quick]

Speed (same process, same threads): an OPT-1.3B-shaped model built from ``OPTConfig`` (random
weights, bf16 by default; ``--quick``: OPT-125M shape) and SmolLM2-135M (fp32), dense vs ``mlp`` (FFN neurons), ``heads``
(KV groups), ``both`` and ``depth`` (whole layers) at each level, plus unstructured 30% magnitude
(zeros in dense kernels) as the contrast. Dense and pruned are timed in alternation, ``--repeats``
rounds, medians: prefill = one forward pass over 1 x ``--prefill-len`` tokens; decode = greedy
tokens/s at batch 1 and 8: ``--new-tokens`` cached one-token forward passes after a ``--prompt-len``
prompt (whose prefill is not timed). Ideal speed-ups: decode = bytes of the weights read per token (every
parameter except embedding tables that are not the LM head) dense / pruned; prefill = FLOPs dense /
pruned (2 x Linear weights + attention scores per token). ``ratio`` = measured / ideal.

Level: the fraction of units removed in every layer (``sparsity``: FFN neurons for ``mlp``, KV groups
for ``heads``, both for ``both``) or of layers (``depth``: ``num_layers = round(level x layers)``);
the table states the parameters actually removed. OPT units are picked by magnitude (random weights,
only shapes matter); SmolLM2 units by activation-aware scores from ``--calibration`` windows of the
embedded Python-docs corpus (depth: block influence), so the evaluation text is never seen.

Quality: SmolLM2 perplexity on WikiText-2 validation (``../shared/data/wikitext-2-valid.txt``,
falling back to ``embedded@test``) over ``--eval-windows`` non-overlapping ``--eval-len``-token windows,
for every kind and level, and at 20% MLP neurons for each importance / allocation variant.

On a machine shared with other jobs, ``--threads 1 --clock cpu`` times the process's own CPU time
(robust to being descheduled, not to memory-bandwidth contention); the table header says which.
Prints markdown tables and writes ``benchmarks/results/structured[_quick].json``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import inspect
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pruning_hf import PruningConfig, prune  # noqa: E402
from pruning_hf.models.architectures import decoder_layers, get_architecture, linear_modules  # noqa: E402
from pruning_hf.data.text import calibration_windows, load_texts, tokenize_texts  # noqa: E402
from pruning_hf.evaluation import perplexity  # noqa: E402
from pruning_hf.hf.loading import load_model, load_tokenizer  # noqa: E402
from pruning_hf.models.shrink import attention_linears  # noqa: E402
import common  # noqa: E402

SMOLLM2 = "embedded:smollm2-135m"
WIKITEXT = "shared/data/wikitext-2-valid.txt"
KINDS = ("mlp", "heads", "both", "depth")
OPT_SHAPES = {  # OPTConfig fields of the published checkpoints
    "opt-125m": dict(hidden_size=768, ffn_dim=3072, num_hidden_layers=12, num_attention_heads=12),
    "opt-1.3b": dict(hidden_size=2048, ffn_dim=8192, num_hidden_layers=24, num_attention_heads=32),
}


def default_eval_text() -> str:
    for base in (ROOT.parent, ROOT.parent.parent):
        if (base / WIKITEXT).is_file():
            return str(base / WIKITEXT)
    return "embedded@test"


# --- models and configs ------------------------------------------------------------------------------
def random_opt(shape: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, OPTConfig

    fields = OPT_SHAPES[shape]
    config = OPTConfig(vocab_size=50272, max_position_embeddings=2048, word_embed_proj_dim=fields["hidden_size"],
                       **fields)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def pruning_config(kind: str, level: float, num_layers: int, importance: str, calibration: dict,
                   allocation: str = "uniform") -> PruningConfig:
    """Speed depends on shapes only; quality here is the score-and-cut baseline (update 'none', per-layer block
    influence), as this table always measured: the reconstructing defaults are in structured_quality.py."""
    if kind == "depth":
        return PruningConfig(method="depth", num_layers=max(1, round(level * num_layers)), selection="influence",
                             update="none", calibration=calibration)
    if kind == "unstructured":
        return PruningConfig(method="magnitude", sparsity=level)
    update = "bias" if importance == "fluctuation" else "none"  # FLAP: fluctuation scores + mean compensation
    return PruningConfig(method="structured", target=kind, sparsity=level, importance=importance, update=update,
                         allocation=allocation, calibration=calibration)


# --- ideal costs ---------------------------------------------------------------------------------
def decode_bytes(model: nn.Module) -> int:
    """Bytes of weights read per decoded token: all parameters except embedding tables (one row read)
    that are not also the LM head."""
    head = model.get_output_embeddings().weight
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding) and m.weight is not head}
    return sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in tables)


def prefill_flops(model: nn.Module, seq_len: int) -> float:
    """FLOPs per prefill token: 2 x every Linear weight (incl. LM head) + 4 x query width x mean causal context."""
    linear = 2 * sum(m.weight.numel() for m in linear_modules(model).values())
    spec = get_architecture(model)
    query = sum(attention_linears(layer, spec)[0].out_features for layer in decoder_layers(model, spec))
    return linear + 4 * query * (seq_len + 1) / 2


# --- timing --------------------------------------------------------------------------------------
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


@torch.no_grad()
def _seconds(fn, clock: str) -> float:
    start = CLOCKS[clock]()
    fn()
    return CLOCKS[clock]() - start


@torch.no_grad()
def greedy_decode(model, prompts: torch.Tensor, steps: int, clock: str) -> tuple[torch.Tensor, float]:
    """Greedy tokens ``(batch, steps)`` after ``prompts``, and the seconds of the ``steps`` cached
    one-token forward passes (the prompt's prefill is not timed)."""
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def step(ids, cache):
        out = model(input_ids=ids, use_cache=True, **{cache_arg: cache})
        return out.logits[:, -1:].argmax(-1), getattr(out, "cache", None) or out.past_key_values

    token, cache = step(prompts, None)
    tokens = []
    start = CLOCKS[clock]()
    for _ in range(steps):
        tokens.append(token)
        token, cache = step(token, cache)
    return torch.cat(tokens, 1), CLOCKS[clock]() - start


def time_once(model, args) -> dict[str, float]:
    """One round: prefill seconds and decode tokens/s at each batch size."""
    generator = torch.Generator().manual_seed(0)
    vocab = model.get_input_embeddings().num_embeddings
    prefill_ids = torch.randint(3, vocab, (1, args.prefill_len), generator=generator)
    result = {"prefill_s": _seconds(lambda: model(input_ids=prefill_ids, use_cache=False), args.clock)}
    for batch in (1, 8):
        prompts = torch.randint(3, vocab, (batch, args.prompt_len), generator=generator)
        _, seconds = greedy_decode(model, prompts, args.new_tokens, args.clock)
        result[f"decode_b{batch}_tok_s"] = batch * args.new_tokens / seconds
    return result


def compare_speed(dense, pruned, args) -> dict[str, dict[str, float]]:
    """Median timings of dense and pruned, measured in alternating rounds after one warm-up each."""
    rounds = {"dense": [], "pruned": []}
    for model in (dense, pruned):
        greedy_decode(model, torch.ones(1, 4, dtype=torch.long), 2, args.clock)
    for _ in range(args.repeats):
        for name, model in (("dense", dense), ("pruned", pruned)):
            rounds[name].append(time_once(model, args))
    return {name: {key: statistics.median(r[key] for r in runs) for key in runs[0]} for name, runs in rounds.items()}


def speed_row(model_name: str, kind: str, level: float, dense, pruned, report, args) -> dict:
    timing = compare_speed(dense, pruned, args)
    d, p = timing["dense"], timing["pruned"]
    row = {"model": model_name, "kind": kind, "level": level, "parameters_removed": report.parameters_removed,
           "prefill_ms": 1000 * p["prefill_s"], "dense_prefill_ms": 1000 * d["prefill_s"],
           "prefill_speedup": d["prefill_s"] / p["prefill_s"],
           "prefill_ideal": prefill_flops(dense, args.prefill_len) / prefill_flops(pruned, args.prefill_len)}
    ideal_decode = decode_bytes(dense) / decode_bytes(pruned)
    for batch in (1, 8):
        key = f"decode_b{batch}_tok_s"
        row[f"decode_b{batch}_tok_s"], row[f"dense_decode_b{batch}_tok_s"] = p[key], d[key]
        row[f"decode_b{batch}_speedup"] = p[key] / d[key]
        row[f"decode_b{batch}_ideal"] = ideal_decode
    return row


# --- the runs ------------------------------------------------------------------------------------
def run_model(model_name: str, dense, tokenizer, args, eval_tokens, levels) -> tuple[list[dict], list[dict]]:
    """Speed rows for every kind x level (+ unstructured contrast); quality rows when ``eval_tokens`` is given."""
    real = tokenizer is not None
    calibration = {"source": "embedded", "num_samples": args.calibration[0], "seq_len": args.calibration[1]}
    windows = (calibration_windows(PruningConfig(method="depth", num_layers=1, calibration=calibration).calibration,
                                   tokenizer) if real else
               torch.randint(3, dense.config.vocab_size, (2, 64), generator=torch.Generator().manual_seed(0)))
    num_layers = len(decoder_layers(dense))
    speed, quality = [], []

    def evaluate(kind, level, config):
        model = copy.deepcopy(dense)
        started = time.perf_counter()
        report = prune(model, config, tokenizer, progress=False, windows=windows)
        seconds = time.perf_counter() - started
        row = None
        if eval_tokens is not None:
            ppl = perplexity(model, eval_tokens, args.eval_len, args.eval_windows)["perplexity"]
            options = vars(config.options)
            label = {"depth": f"depth {options.get('num_layers')}/{num_layers} layers",
                     "unstructured": f"unstructured {level:.0%}"}.get(kind, f"{kind} {level:.0%}")
            row = {"kind": kind, "level": level, "label": label,
                   "importance": {"depth": "block influence", "unstructured": "magnitude"}.get(
                       kind, options.get("importance")),
                   "allocation": config.allocation if config.method == "structured" else "-",
                   "parameters_removed": report.parameters_removed, "perplexity": ppl,
                   "prune_seconds": seconds, "details": report.details}
            quality.append(row)
        return model, report

    importance = "activation" if real else "magnitude"
    for kind in args.kinds:
        for level in levels:
            model, report = evaluate(kind, level, pruning_config(kind, level, num_layers, importance, calibration))
            speed.append(speed_row(model_name, kind, level, dense, model, report, args))
            numbers = {k: round(v, 3) for k, v in speed[-1].items() if isinstance(v, float)}
            if quality:
                numbers["perplexity"] = round(quality[-1]["perplexity"], 3)
            print(f"  {model_name} {kind} {level:.0%}: {json.dumps(numbers)}", flush=True)
            del model
            gc.collect()
    model, report = evaluate("unstructured", 0.3, pruning_config("unstructured", 0.3, num_layers, "", calibration))
    speed.append(speed_row(model_name, "unstructured (magnitude)", 0.3, dense, model, report, args))
    del model
    if eval_tokens is not None and not args.quick:
        for variant_importance, allocation in (("magnitude", "uniform"), ("random", "uniform"),
                                               ("fluctuation", "uniform"), ("activation", "adaptive"),
                                               ("fluctuation", "adaptive")):
            evaluate("mlp", 0.2, pruning_config("mlp", 0.2, num_layers, variant_importance, calibration, allocation))
            gc.collect()
    return speed, quality


def speed_table(rows: list[dict]) -> str:
    lines = ["| model | pruned | params removed | prefill ms (dense) | prefill speed-up / ideal / ratio | "
             "decode b1 tok/s (dense) | b1 speed-up / ideal / ratio | decode b8 tok/s (dense) | "
             "b8 speed-up / ideal / ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r["model"], f"{r['kind']} {r['level']:.0%}", f"{r['parameters_removed']:.1%}",
                 f"{r['prefill_ms']:.0f} ({r['dense_prefill_ms']:.0f})",
                 f"{r['prefill_speedup']:.2f}x / {r['prefill_ideal']:.2f}x / {r['prefill_speedup'] / r['prefill_ideal']:.2f}"]
        for batch in (1, 8):
            speedup, ideal = r[f"decode_b{batch}_speedup"], r[f"decode_b{batch}_ideal"]
            cells += [f"{r[f'decode_b{batch}_tok_s']:.1f} ({r[f'dense_decode_b{batch}_tok_s']:.1f})",
                      f"{speedup:.2f}x / {ideal:.2f}x / {speedup / ideal:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def quality_table(rows: list[dict], dense_ppl: float) -> str:
    lines = ["| pruned | importance | allocation | params removed | perplexity | vs dense |", "|---|---|---|---|---|---|",
             f"| dense | - | - | 0.0% | {dense_ppl:.2f} | 1.00x |"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['importance']} | {r['allocation']} | {r['parameters_removed']:.1%} | "
                     f"{r['perplexity']:.2f} | {r['perplexity'] / dense_ppl:.2f}x |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="OPT-125M shape, 30%% only, small budgets (~3 min)")
    parser.add_argument("--levels", type=float, nargs="+", default=None, help="default 0.1 0.2 0.3 0.5 (quick: 0.3)")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="what to remove (default: all)")
    parser.add_argument("--repeats", type=int, default=None, help="timing rounds per model (default 3, quick 2)")
    parser.add_argument("--prefill-len", type=int, default=64, help="prefill tokens (batch 1)")
    parser.add_argument("--prompt-len", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=8, help="decode steps timed")
    parser.add_argument("--opt-dtype", choices=("bfloat16", "float32"), default="bfloat16", help=(
        "dtype of the OPT-shaped model (bf16: half the memory of fp32, and faster on CPUs with AVX512-BF16/AMX)"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help=(
        "wall time, or the process's CPU time (with --threads 1: robust on a machine shared with other jobs)"))
    parser.add_argument("--calibration", type=int, nargs=2, default=None, metavar=("SAMPLES", "SEQ_LEN"),
                        help="SmolLM2 calibration windows (default 16 256, quick 8 256)")
    parser.add_argument("--eval-text", default=None, help="perplexity text (default: WikiText-2 valid)")
    parser.add_argument("--eval-len", type=int, default=None, help="eval window length (default 512, quick 256)")
    parser.add_argument("--eval-windows", type=int, default=None, help="eval windows (default 16, quick 4)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    quick = args.quick
    levels = args.levels or ([0.3] if quick else [0.1, 0.2, 0.3, 0.5])
    args.repeats = args.repeats or (2 if quick else 3)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.calibration = args.calibration or ([8, 256] if quick else [16, 256])
    args.eval_len = args.eval_len or (256 if quick else 512)
    args.eval_windows = args.eval_windows or (4 if quick else 16)
    eval_text = args.eval_text or common.text_source("embedded@test")
    output = Path(args.output or ROOT / "benchmarks" / "results" / f"structured{'_quick' if quick else ''}.json")
    started = time.perf_counter()

    opt_shape = "opt-125m" if quick else "opt-1.3b"
    print(f"speed: {opt_shape}-shaped OPT (random weights), levels {levels}", flush=True)
    opt_speed, _ = run_model(f"{opt_shape} (random, {args.opt_dtype})",
                             random_opt(opt_shape, getattr(torch, args.opt_dtype)), None, args, None, levels)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_name(output.name + ".tmp").write_text(json.dumps({"speed": opt_speed}, indent=2))  # survives a crash
    gc.collect()
    opt_seconds = time.perf_counter() - started
    print("speed and quality: SmolLM2-135M", flush=True)
    tokenizer = load_tokenizer(SMOLLM2)
    smollm2 = load_model(SMOLLM2, dtype=torch.float32)
    eval_tokens = tokenize_texts(load_texts(eval_text), tokenizer)
    dense_ppl = perplexity(smollm2, eval_tokens, args.eval_len, args.eval_windows)["perplexity"]
    smol_speed, quality = run_model("smollm2-135m (float32)", smollm2, tokenizer, args, eval_tokens, levels)

    speed = opt_speed + smol_speed
    smollm2_seconds = time.perf_counter() - started - opt_seconds
    settings = {"kinds": args.kinds, "sections_seconds": {"opt": opt_seconds, "smollm2": smollm2_seconds},
                "levels": levels, "repeats": args.repeats, "prefill": [1, args.prefill_len],
                "decode": {"batches": [1, 8], "prompt_len": args.prompt_len, "new_tokens": args.new_tokens},
                "calibration": {"source": "embedded", "num_samples": args.calibration[0],
                                "seq_len": args.calibration[1]},
                "eval": {"text": eval_text, "seq_len": args.eval_len, "windows": args.eval_windows,
                         "predicted_tokens": args.eval_windows * (args.eval_len - 1)},
                "threads": torch.get_num_threads(), "clock": args.clock,
                "dtype": {"opt": args.opt_dtype, "smollm2": "float32"}, "cpu": platform.processor() or platform.machine(),
                "torch": torch.__version__}
    print(f"\n### Speed (CPU, {settings['threads']} threads, {args.clock} clock; prefill 1 x {args.prefill_len} tokens; decode "
          f"{args.new_tokens} tokens after a {args.prompt_len}-token prompt; median of {args.repeats} alternating rounds)\n")
    print(speed_table(speed))
    print(f"\n### Quality: SmolLM2-135M perplexity, {Path(eval_text).name} ({args.eval_windows} x {args.eval_len} tokens); "
          f"calibration {args.calibration[0]} x {args.calibration[1]} tokens of the embedded corpus\n")
    print(quality_table(quality, dense_ppl))
    total = time.perf_counter() - started
    print(f"\n{total / 60:.1f} min; `{' '.join(shlex.quote(a) for a in ['python', 'benchmarks/structured.py', *sys.argv[1:]])}`")
    output.write_text(json.dumps({"command": " ".join(["python", "benchmarks/structured.py", *sys.argv[1:]]),
                                  "settings": settings, "seconds": total, "speed": speed,
                                  "quality": {"dense_perplexity": dense_ppl, "rows": quality}}, indent=2))
    output.with_name(output.name + ".tmp").unlink(missing_ok=True)
    print(f"wrote {output.relative_to(ROOT) if output.is_relative_to(ROOT) else output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
