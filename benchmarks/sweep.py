"""Sweep of SmolLM2-135M (embedded): magnitude / Wanda / SparseGPT at many levels and 2:4.

    python benchmarks/sweep.py [--quick]

Runs :func:`pruning_hf.sweep` (calibration: random windows of the embedded corpus' train split;
evaluation: the first windows of its held-out test split) and prints its table (perplexity, size,
prefill latency, decode speed and energy per point, dense first) and the recommendation for
``ppl_increase<=50%``. Writes ``benchmarks/results/sweep[-quick].json`` and the sweep folder
``benchmarks/results/sweep[-quick]/`` (sweep.json / .csv / .md, PNG plots); a rerun resumes there.
Latency and energy are measured in the same process but on a shared machine: read them as ratios.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

MODEL = "embedded:smollm2-135m"
BUDGET = "ppl_increase<=50%"
FULL = dict(methods=["magnitude", "wanda", "sparsegpt"], sparsities="0.1,0.2,...,0.7", patterns=["unstructured", "2:4"],
            calibration={"source": "embedded", "num_samples": 32, "seq_len": 512},
            evaluation={"text": "embedded@test", "seq_len": 512, "max_windows": 20})
QUICK = dict(methods=["magnitude", "wanda"], sparsities="0.3,0.5", patterns=["unstructured", "2:4"],
             calibration={"source": "embedded", "num_samples": 8, "seq_len": 256},
             evaluation={"text": "embedded@test", "seq_len": 256, "max_windows": 8})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 points on small data instead of 24")
    args = parser.parse_args()
    from pruning_hf import sweep

    name = "sweep-quick" if args.quick else "sweep"
    setup = {"model": MODEL, "budget": BUDGET, "objective": "smallest", **(QUICK if args.quick else FULL)}
    result = sweep(MODEL, **{k: v for k, v in setup.items() if k != "model"}, output=common.RESULTS / name)
    print(f"{MODEL}; calibration {setup['calibration']}; evaluation {setup['evaluation']}; "
          f"{result.measured} point(s) measured, {result.reused} reused\n")
    print(result.table())
    print(f"\nrecommendation (smallest within {BUDGET}): {result.recommendation['reason']}")
    path = common.write_results(name, {**setup, "dense": result.dense, "recommendation": result.recommendation},
                                result.rows)
    print(f"\nwrote {path} and {common.RESULTS / name}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
