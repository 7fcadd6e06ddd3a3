"""How fast pruning_hf prunes, and what the sub-block schedule does for quality: layer vs sublayer schedule.

    python benchmarks/prune_speed.py [--quick] [--models smollm2-135m,gemma3-270m] [--rounds N]

For each embedded model, in one run on the same calibration windows:

* ``dense forward``: one forward pass of the calibration windows (batches of 8) through the loaded model,
  the floor any calibration-based pruning pays;
* per method (wanda, sparsegpt, sparsegpt with dense targets, and admm where registered) and schedule
  (``layer``: every decoder layer twice per batch; ``sublayer``: attention then MLP sub-block, every matmul
  once): the whole job of ``pruning-hf prune`` (load + prune + save, in-process) in seconds, its ratio to the
  dense forward pass, and the perplexity on held-apart tokens;
* llm-compressor's ``oneshot`` (same windows, same sparsity, its targets the decoder layers) when
  ``llmcompressor`` is importable, with the sparsity it reached and its perplexity; the benchmark installs
  nothing and says so otherwise. To include it, run the benchmark from an environment that has it
  (llmcompressor 0.14 pins transformers <= 5.17: a separate venv with ``pip install torch==2.13.0
  llmcompressor`` and this checkout ``pip install -e .``); the JSON records the versions that ran.

Each row runs in a fresh process; ``--rounds`` repeats the timed rows in alternating order and reports the
median with min / max, and how many cores other processes kept busy during its timed part (``/proc/stat``;
the most over the rounds; ``idle`` when under a quarter of a core). Rows of models not run are kept from the
results file (same set-up); each row records the llm-compressor status and the transformers version of the run
that made it. Calibration: random windows (seed 0) of WikiText-2 validation (``../shared/data``)
after the evaluation tokens, else the embedded corpus; evaluation: the first windows of the same text.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

METHODS = [
    ("wanda 50%", dict(method="wanda", sparsity=0.5)),
    ("sparsegpt 50%", dict(method="sparsegpt", sparsity=0.5)),
    ("sparsegpt 50% + dense targets", dict(method="sparsegpt", sparsity=0.5, dense_targets=True)),
    ("admm 50%", dict(method="admm", sparsity=0.5)),
]
SCHEDULES = ("layer", "sublayer")


def _windows(model_name: str, setup: dict):
    from pruning_hf.data.text import sample_windows
    from pruning_hf.hf.loading import load_tokenizer

    tokenizer = load_tokenizer(model_name)
    _, eval_tokens, calib_tokens = common.split_tokens(tokenizer, setup["eval_windows"] * setup["seq_len"])
    return tokenizer, eval_tokens, sample_windows(calib_tokens, setup["calibration_samples"], setup["seq_len"], seed=0)


def dense_forward(model_name: str, setup: dict) -> dict:
    """Seconds of one forward pass of the calibration windows through the dense model (batches of 8)."""
    import torch

    torch.set_num_threads(setup["threads"])

    from pruning_hf.hf.loading import load_model

    _, _, windows = _windows(model_name, setup)
    model = load_model(model_name)
    with torch.no_grad():
        model(windows[:1])  # warm-up
        with common.OtherLoad() as load:
            started = time.perf_counter()
            for batch in windows.split(8):
                model(batch)
            seconds = time.perf_counter() - started
    return {"seconds": seconds, "other_cores": load.cores}


def prune_row(model_name: str, kwargs: dict, schedule: str, setup: dict) -> dict:
    """Load + prune + save (what ``pruning-hf prune`` does) timed; then held-apart perplexity (not timed)."""
    import torch

    torch.set_num_threads(setup["threads"])

    from pruning_hf import PruningConfig, prune
    from pruning_hf.evaluation import perplexity
    from pruning_hf.hf.loading import load_model

    torch.manual_seed(0)
    tokenizer, eval_tokens, windows = _windows(model_name, setup)
    config = PruningConfig(calibration={"batch_size": 8, "num_samples": setup["calibration_samples"],
                                        "seq_len": setup["seq_len"]}, schedule=schedule, **kwargs)
    with tempfile.TemporaryDirectory() as folder, common.OtherLoad() as load:
        started = time.perf_counter()
        model = load_model(model_name)
        report = prune(model, config, tokenizer, windows=windows, progress=False, energy=False)
        model.save_pretrained(folder)
        seconds = time.perf_counter() - started
    result = perplexity(model, eval_tokens, setup["seq_len"], setup["eval_windows"])
    return {"seconds": seconds, "other_cores": load.cores, "prune_seconds": report.total_seconds,
            "schedule_run": report.schedule, "perplexity": result["perplexity"], "eval_tokens": result["tokens"]}


def oneshot_row(model_name: str, kwargs: dict, setup: dict) -> dict:
    """llm-compressor's ``oneshot`` with the same windows and sparsity (only when it is importable): load +
    oneshot timed (no save), then the fraction of zeros in the decoder layers' Linears (a run that pruned
    nothing must not pass as fast) and the held-apart perplexity, not timed."""
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

    import torch

    from pruning_hf.evaluation import perplexity
    from pruning_hf.hf.loading import load_model
    from pruning_hf.models.architectures import decoder_layers, get_architecture

    torch.set_num_threads(setup["threads"])
    _, eval_tokens, windows = _windows(model_name, setup)
    modifier = {"wanda": WandaPruningModifier, "sparsegpt": SparseGPTModifier}[kwargs["method"]]
    dataset = Dataset.from_dict({"input_ids": windows.tolist(), "attention_mask": [[1] * windows.shape[1]] * len(windows)})
    with common.OtherLoad() as load:
        started = time.perf_counter()
        model = load_model(model_name)
        # llm-compressor's targets are the modules it prunes layer by layer (the decoder layers), not Linears
        layers = rf"re:{get_architecture(model).layers_path.replace('.', '[.]')}[.]\d+$"
        oneshot(model=model, dataset=dataset, recipe=modifier(sparsity=kwargs["sparsity"], targets=[layers]),
                num_calibration_samples=len(windows), max_seq_length=windows.shape[1])
        seconds = time.perf_counter() - started
    linears = [m for layer in decoder_layers(model) for m in layer.modules() if isinstance(m, torch.nn.Linear)]
    zeros = sum(int((m.weight == 0).sum()) for m in linears) / sum(m.weight.numel() for m in linears)
    result = perplexity(model, eval_tokens, setup["seq_len"], setup["eval_windows"])
    return {"seconds": seconds, "other_cores": load.cores, "sparsity_reached": zeros,
            "perplexity": result["perplexity"], "eval_tokens": result["tokens"]}


def _spread(values: list[float]) -> dict:
    return {"seconds": statistics.median(values), "seconds_min": min(values), "seconds_max": max(values),
            "rounds": len(values)}


def main() -> None:
    from pruning_hf.methods import METHODS as REGISTERED

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 x 256 calibration and evaluation tokens")
    parser.add_argument("--models", default="smollm2-135m,gemma3-270m", help="embedded models, comma-separated")
    parser.add_argument("--rounds", type=int, default=1, help="timed repetitions per row, in alternating order")
    parser.add_argument("--methods", default=None, help="only these configurations (labels, comma-separated: "
                        + ", ".join(label for label, _ in METHODS) + ")")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per row (1: steadiest on shared cores)")
    args = parser.parse_args()
    setup = {"text": common.text_source(), "seq_len": 256 if args.quick else 512,
             "calibration_samples": 8 if args.quick else 32, "eval_windows": 8 if args.quick else 40,
             "calibration": "random windows, seed 0, from the text after the evaluation tokens, batches of 8",
             "evaluation": "first eval_windows x seq_len tokens, non-overlapping windows",
             "timed": "load + prune + save in a fresh process (what pruning-hf prune does), median of the rounds",
             "threads": args.threads}
    methods = [(label, kwargs) for label, kwargs in METHODS if kwargs["method"] in REGISTERED
               and (args.methods is None or label in args.methods.split(","))]
    unknown = set(args.methods.split(",")) - {label for label, _ in METHODS} if args.methods else set()
    if unknown:
        parser.error(f"--methods: unknown {sorted(unknown)}; choose from {[label for label, _ in METHODS]}")
    peer = importlib.util.find_spec("llmcompressor") is not None
    peer_status = (f"{importlib.metadata.version('llmcompressor')} importable: oneshot rows included"
                   if peer else "not installed: no oneshot rows")  # recorded per row: runs may differ
    print(f"llm-compressor {peer_status}", file=sys.stderr)
    rows = []
    for name in args.models.split(","):
        model_name = f"embedded:{name}"
        jobs = [("dense forward", None, None)] + [(label, kwargs, s) for label, kwargs in methods for s in SCHEDULES]
        if peer:
            jobs += [(f"llm-compressor {label}", kwargs, "oneshot") for label, kwargs in methods
                     if kwargs["method"] in ("wanda", "sparsegpt") and len(kwargs) == 2]
        times: dict[int, list[float]] = {i: [] for i in range(len(jobs))}
        others: dict[int, list[float]] = {i: [] for i in range(len(jobs))}
        results: dict[int, dict] = {}
        for round_index in range(args.rounds):
            order = range(len(jobs)) if round_index % 2 == 0 else reversed(range(len(jobs)))
            for i in order:
                label, kwargs, schedule = jobs[i]
                if kwargs is None:
                    result = common.run_isolated(dense_forward, model_name, setup)
                elif schedule == "oneshot":
                    result = common.run_isolated(oneshot_row, model_name, kwargs, setup)
                else:
                    result = common.run_isolated(prune_row, model_name, kwargs, schedule, setup)
                times[i].append(result["seconds"])
                if result.get("other_cores") is not None:
                    others[i].append(result["other_cores"])
                results[i] = result
                print(f"{name} {label} [{schedule}] round {round_index + 1}: {result['seconds']:.1f} s"
                      + (f", ppl {result['perplexity']:.2f}" if "perplexity" in result else ""), file=sys.stderr)
        forward = statistics.median(times[0])
        for i, (label, kwargs, schedule) in enumerate(jobs):
            row = {"model": name, "configuration": label, "schedule": schedule, **results[i], **_spread(times[i]),
                   "other_cores": max(others[i], default=None),
                   "idle": bool(others[i]) and max(others[i]) < common.IDLE_OTHER_CORES,
                   "llm_compressor": peer_status, "transformers": importlib.metadata.version("transformers")}
            row["vs_dense_forward"] = row["seconds"] / forward
            rows.append(row)
        for row in rows:
            if row["model"] == name and row["schedule"] in SCHEDULES:
                peer_row = next((r for r in rows if r["model"] == name and r["schedule"] == "oneshot"
                                 and r["configuration"] == f"llm-compressor {row['configuration']}"), None)
                row["vs_llm_compressor"] = row["seconds"] / peer_row["seconds"] if peer_row else None
    print(f"\ncalibration {setup['calibration_samples']} x {setup['seq_len']} tokens, evaluation "
          f"{setup['eval_windows']} x {setup['seq_len']} held-apart tokens of {Path(setup['text']).name}; "
          f"llm-compressor {peer_status}\n")
    print(common.markdown_table(rows, [("model", "model"), ("configuration", "configuration"), ("schedule", "schedule"),
                                       ("seconds", "load+prune+save s"), ("seconds_min", "min"),
                                       ("seconds_max", "max"), ("vs_dense_forward", "x dense forward"),
                                       ("vs_llm_compressor", "x llm-compressor"), ("perplexity", "ppl"),
                                       ("other_cores", "other processes' cores (most)")]))
    name = "prune_speed" + ("-quick" if args.quick else "")
    earlier = common.RESULTS / f"{name}.json"  # keep the rows of models not run this time (same set-up only)
    if earlier.is_file():
        kept = json.loads(earlier.read_text())
        kept_setup = {k: v for k, v in kept["setup"].items() if k != "llm_compressor"}  # older files: run-wide
        if kept_setup == setup:
            rows = [{"llm_compressor": kept["setup"].get("llm_compressor"),
                     "transformers": kept["environment"]["transformers"], **r} for r in kept["rows"]
                    if r["model"] not in args.models.split(",")] + rows
    path = common.write_results(name, setup, rows)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
