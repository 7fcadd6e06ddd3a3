"""Dense vs Wanda 50% vs SparseGPT 2:4 on SmolLM2-135M: quality, efficiency and energy in one run.

    python benchmarks/evaluation.py [--quick] [--eval-text PATH] [--country-iso USA] [--threads 1]

Everything comes from the public API (one ``prune_and_compare`` call): the dense model is measured,
then each method prunes a fresh copy of it (calibration: 32 windows x 512 tokens of the embedded
Python-docs corpus, so the evaluation text is never seen by the pruning) and is measured again on
the same data: perplexity over 40 non-overlapping 512-token windows of WikiText-2 validation
(``../shared/data/wikitext-2-valid.txt``; the embedded held-out split when that file is missing),
accuracy on the local task files in ``benchmarks/data/`` (hand-written, see its README), speed and
memory (median of 5), and codecarbon energy for pruning and for a fixed 8 x 64-token generation
(3 rounds). The three models stay in memory and their speed and energy runs alternate round by
round (``side_by_side``), so a busy machine's slow spells hit them alike.
Torch runs on one thread by default: on the shared 2-core machines here two threads were 3-4x
slower than one under load. Prints one markdown table and writes ``benchmarks/results/evaluation.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pruning_hf import PruningConfig  # noqa: E402
from pruning_hf import prune_and_compare  # noqa: E402
import common  # noqa: E402

MODEL = "embedded:smollm2-135m"
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small budget: checks the pipeline, numbers are noisy")
    parser.add_argument("--eval-text", default=None, help="perplexity text (default: WikiText-2 valid, else embedded@test)")
    parser.add_argument("--country-iso", default="USA", help="grid for CO2e (ISO alpha-3; default USA, as in the README)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "evaluation.json"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    eval_text = args.eval_text or common.text_source("embedded@test")
    tasks = sorted(os.path.relpath(p) for p in (ROOT / "benchmarks" / "data").glob("*.jsonl"))
    calibration = {"source": "embedded", "num_samples": 8 if args.quick else 32, "seq_len": 512, "seed": 0}
    methods = {
        "wanda 50%": PruningConfig(method="wanda", sparsity=0.5, calibration=calibration),
        "sparsegpt 2:4": PruningConfig(method="sparsegpt", pattern="2:4", calibration=calibration),
    }
    settings = {
        "text": eval_text, "seq_len": 512, "max_windows": 8 if args.quick else 40, "tasks": tasks,
        "task_limit": 10 if args.quick else None, "efficiency": True, "repeats": 2 if args.quick else 5,
        "new_tokens": 16 if args.quick else 32, "energy": True, "country_iso_code": args.country_iso,
        "energy_new_tokens": 16 if args.quick else 64, "energy_rounds": 1 if args.quick else 3, "side_by_side": True,
    }
    started = time.perf_counter()
    report = prune_and_compare(MODEL, None, methods, progress=False, **settings)
    seconds = time.perf_counter() - started

    command = shlex.join(["python", "benchmarks/evaluation.py", *sys.argv[1:]])
    print(f"## {MODEL}: dense vs Wanda 50% vs SparseGPT 2:4 (`{command}`, {seconds / 60:.1f} min)\n")
    print(f"Calibration: {calibration['num_samples']} x {calibration['seq_len']} tokens of `embedded` (seed 0).\n")
    print(report.to_markdown())
    data = report.to_dict()
    data["benchmark"] = {"command": command, "model": MODEL, "quick": args.quick, "threads": args.threads,
                         "seconds": seconds, "calibration": calibration}
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(data, indent=2) + "\n")
    print(f"\nwrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
