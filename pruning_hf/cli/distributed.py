"""Data-parallel perplexity under ``accelerate launch`` (every process scores a share of the windows).

    accelerate launch --num_processes 4 -m pruning_hf.cli.distributed MODEL --text embedded@test --seq-len 2048

On a CPU-only machine, ``accelerate launch --multi_gpu --num_processes 2`` starts CPU processes that talk
over gloo. Without ``accelerate launch`` everything runs in the current process.
See :mod:`pruning_hf.evaluation.distributed`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

import torch

from ..data.text import load_texts, tokenize_texts
from ..evaluation.distributed import distributed_perplexity
from ..hf.loading import ModelLoadError, preflight

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="accelerate launch -m pruning_hf.cli.distributed",
        description="Data-parallel perplexity of a causal LM (run under `accelerate launch`, or alone).")
    parser.add_argument("model", help="checkpoint folder, Hub id or embedded:NAME (compressed checkpoints work)")
    parser.add_argument("--text", default="embedded@test", help="text source (see pruning_hf.data.text)")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--max-windows", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    parser.add_argument("--json", default=None, help="also write the result to this file (main process)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from accelerate import PartialState

    args = _parser().parse_args(argv)
    state = PartialState(cpu=not torch.cuda.is_available())  # several CPU processes talk over gloo
    try:
        ready = preflight(args.model, hf_kwargs={"dtype": args.dtype}, texts=(args.text,))
        model = ready.load_model().to(state.device)
        tokens = tokenize_texts(load_texts(args.text), ready.tokenizer)
        result = distributed_perplexity(model, tokens, args.seq_len, args.max_windows, args.batch_size, state=state)
    except (ValueError, ModelLoadError, FileNotFoundError) as err:
        print(f"pruning_hf.cli.distributed: error: {err}", file=sys.stderr)
        return 2
    result["source"] = args.text
    if state.is_main_process:
        print(json.dumps(result))
        if args.json:
            with open(args.json, "w") as handle:
                json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
