"""Unstructured and N:M pruning of SmolLM2-135M: perplexity, prune time and peak RSS per method.

    python benchmarks/unstructured.py [--quick] [--schedule auto|sublayer|layer]

Calibration: random windows (seed 0) from WikiText-2 validation (``../shared/data``) when present,
else the embedded corpus; evaluation: the first windows of the same text, disjoint from calibration.
Each row runs in a fresh process so its peak RSS is its own (model load + pruning + evaluation).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

MODEL = "embedded:smollm2-135m"
ROWS = [
    ("dense", None),
    ("magnitude (layer) 50%", dict(method="magnitude", sparsity=0.5, scope="layer")),
    ("magnitude (global) 50%", dict(method="magnitude", sparsity=0.5, scope="global")),
    ("wanda 50%", dict(method="wanda", sparsity=0.5)),
    ("sparsegpt 50%", dict(method="sparsegpt", sparsity=0.5)),
    ("magnitude 2:4", dict(method="magnitude", pattern="2:4")),
    ("wanda 2:4", dict(method="wanda", pattern="2:4")),
    ("sparsegpt 2:4", dict(method="sparsegpt", pattern="2:4")),
    ("magnitude 4:8", dict(method="magnitude", pattern="4:8")),
    ("wanda 4:8", dict(method="wanda", pattern="4:8")),
    ("sparsegpt 4:8", dict(method="sparsegpt", pattern="4:8")),
]


def run_row(label: str, method_kwargs: dict | None, setup: dict) -> dict:
    import torch

    from pruning_hf import PruningConfig, prune
    from pruning_hf.data.text import sample_windows
    from pruning_hf.evaluation import perplexity
    from pruning_hf.hf.loading import load_model, load_tokenizer

    torch.manual_seed(0)
    tokenizer = load_tokenizer(MODEL)
    model = load_model(MODEL)
    _, eval_tokens, calib_tokens = common.split_tokens(tokenizer, setup["eval_windows"] * setup["seq_len"])
    row = {"configuration": label, "prune_seconds": 0.0}
    if method_kwargs:
        windows = sample_windows(calib_tokens, setup["calibration_samples"], setup["seq_len"], seed=0)
        config = PruningConfig(calibration={"batch_size": 8}, schedule=setup["schedule"], **method_kwargs)
        started = time.perf_counter()
        report = prune(model, config, tokenizer, windows=windows, progress=False)
        row["prune_seconds"] = time.perf_counter() - started
        row["sparsity"] = report.sparsity
    result = perplexity(model, eval_tokens, setup["seq_len"], setup["eval_windows"])
    row.update(perplexity=result["perplexity"], eval_tokens=result["tokens"], peak_rss_mib=common.peak_rss_mib())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8x256 calibration, 8x256 evaluation, fewer rows")
    parser.add_argument("--schedule", default="auto", help="PruningConfig.schedule of every row (layer: the tables "
                        "measured before the sub-block schedule became the default)")
    args = parser.parse_args()
    setup = {"model": MODEL, "text": common.text_source(), "schedule": args.schedule, "seq_len": 256 if args.quick else 512,
             "calibration_samples": 8 if args.quick else 32, "eval_windows": 8 if args.quick else 40,
             "calibration": "random windows, seed 0, from the text after the evaluation tokens",
             "evaluation": "first eval_windows x seq_len tokens, non-overlapping windows"}
    rows_to_run = ROWS if not args.quick else [r for r in ROWS if "4:8" not in r[0] and "global" not in r[0]]
    rows = []
    for label, kwargs in rows_to_run:
        row = common.run_isolated(run_row, label, kwargs, setup)
        rows.append(row)
        print(f"{label}: ppl {row['perplexity']:.2f} in {row['prune_seconds']:.1f} s", file=sys.stderr)
    dense = rows[0]["perplexity"]
    for row in rows:
        row["ppl_vs_dense"] = row["perplexity"] / dense
    print(f"\nSmolLM2-135M, calibration {setup['calibration_samples']} x {setup['seq_len']} tokens, evaluation "
          f"{setup['eval_windows']} x {setup['seq_len']} tokens of {Path(setup['text']).name}\n")
    print(common.markdown_table(rows, [("configuration", "configuration"), ("perplexity", "ppl"),
                                       ("ppl_vs_dense", "ppl / dense"), ("prune_seconds", "prune s"),
                                       ("peak_rss_mib", "peak RSS MiB")]))
    path = common.write_results("unstructured" + ("-quick" if args.quick else ""), setup, rows)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
