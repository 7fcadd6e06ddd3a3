"""Structured pruning quality: what reconstruction buys at the same parameter count, on two real models.

    python benchmarks/structured_quality.py [--quick] [--models embedded:smollm2-135m,...]
        [--settings "mlp 30%,both 20%,depth 20%"] [--variants "activation / none,obs / lstsq"] [--speed]
    python benchmarks/structured_quality.py --timing ROUNDS [--models ...]

For each model and setting (``mlp 30%``: FFN neurons; ``both 20%``: FFN neurons and attention units;
``depth 20%``: ``round(0.2 x layers)`` decoder layers), today's configuration (``activation`` scores, cut
only; depth: per-layer block influence, cut only) against the reconstructing ones: FLAP's bias
compensation, least-squares re-fit of the output projections (``update lstsq``), grouped OBS selection
(``importance obs``, also with the depth-increasing and the error-based ``adaptive`` allocations, and with
SparseGPT's 1% dampening instead of the default 0.1%, and in 32 OBS steps instead of one unit per step up
to 512), and for depth the contiguous
closest block with and without ReplaceMe's folded linear map, and the block whose map fits best
(``fitted``). SparseGPT 50% (unstructured) on the same model is the prune-time reference.

All rows of a model share the calibration windows (seeded random windows of the text after the
evaluation tokens) and the evaluation windows (the first non-overlapping windows of WikiText-2
validation), so rows differ only by configuration. ``increase / today's`` is ``(ppl / dense - 1)``
divided by the same for today's configuration of that setting (the issue's target: <= 0.5).
``prune s`` is the whole prune call (calibration forward passes included), ``method s`` the time inside
the method's layer calls. ``--speed`` adds, per setting, decode tokens/s at batch 1 of the pruned model
vs dense (alternating rounds, medians) and its ratio to the ideal (weight bytes read per token).

Prints a markdown table and writes ``benchmarks/results/structured_quality[-quick].json`` after every
row; rows already there for the same text, windows and threads are reused (an interrupted run resumes;
``--rerun`` measures the selected rows again and keeps the others).
Wall times of rows measured at different moments on a shared machine are not comparable; ``--timing
ROUNDS`` prunes only (no evaluation) SparseGPT 50% and the default configuration of each setting in
alternating rounds and reports the process's CPU time (one torch thread), total and per decoder layer,
in ``benchmarks/results/structured_quality-timing.json`` (keeping the rows of models not in the run).
"""

from __future__ import annotations

import argparse
import copy
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # this checkout's pruning_hf, whatever is installed
import common  # noqa: E402

from pruning_hf import PruningConfig  # noqa: E402
from pruning_hf.data.text import sample_windows  # noqa: E402
from pruning_hf.engine import prune_model  # noqa: E402
from pruning_hf.evaluation import perplexity  # noqa: E402
from pruning_hf.hf.loading import load_model, load_tokenizer  # noqa: E402
from pruning_hf.models.architectures import decoder_layers  # noqa: E402

MODELS = ["embedded:smollm2-135m", "embedded:gemma3-270m"]
#: setting -> (kind, level)
SETTINGS = {"mlp 30%": ("mlp", 0.3), "both 20%": ("both", 0.2), "depth 20%": ("depth", 0.2)}
#: width variants: label -> structured options; depth variants: label -> depth options
WIDTH = {
    "activation / none": {"importance": "activation", "update": "none"},
    "fluctuation / bias": {"importance": "fluctuation", "update": "bias"},
    "activation / lstsq": {"importance": "activation", "update": "lstsq"},
    "obs / none": {"importance": "obs", "update": "none"},
    "obs / lstsq": {"importance": "obs", "update": "lstsq"},
    "obs / lstsq / increasing": {"importance": "obs", "update": "lstsq", "allocation": "increasing"},
    "obs / lstsq / adaptive": {"importance": "obs", "update": "lstsq", "allocation": "adaptive"},
    "obs / lstsq / 1% dampening": {"importance": "obs", "update": "lstsq", "dampening": 0.01},
    "obs / lstsq / 32 steps": {"importance": "obs", "update": "lstsq", "obs_steps": 32},
}
DEPTH = {
    "influence / none": {"selection": "influence", "update": "none"},
    "block / none": {"selection": "block", "update": "none"},
    "block / linear": {"selection": "block", "update": "linear"},
    "fitted / linear": {"selection": "fitted", "update": "linear"},
}
TODAY = {"mlp": "activation / none", "both": "activation / none", "depth": "influence / none"}
REFERENCE = "sparsegpt 50% (time reference)"
FULL = dict(models=MODELS, settings=list(SETTINGS), calibration=[32, 512], evaluation=[40, 512],
            variants=[*WIDTH, *DEPTH, REFERENCE])
QUICK = dict(models=MODELS[:1], settings=["mlp 30%", "depth 20%"], calibration=[8, 256], evaluation=[8, 256],
             variants=["activation / none", "obs / lstsq", "influence / none", "block / linear"])
COLUMNS = [("model", "model"), ("setting", "setting"), ("variant", "importance / update"),
           ("removed", "params removed"), ("perplexity", "ppl"), ("vs_dense", "vs dense"),
           ("vs_today", "increase / today's"), ("prune_seconds", "prune s"), ("method_seconds", "method s"),
           ("decode", "decode b1 speed-up / ideal")]
#: what makes two rows comparable: the same text, calibration and evaluation windows, and threads
MEASUREMENT_KEYS = ("text", "calibration", "evaluation", "threads")


def config_for(setting: str, variant: str, num_layers: int, calibration: dict) -> PruningConfig:
    if variant == REFERENCE:
        return PruningConfig(method="sparsegpt", sparsity=0.5, calibration=calibration)
    kind, level = SETTINGS[setting]
    if kind == "depth":
        return PruningConfig(method="depth", num_layers=max(1, round(level * num_layers)), calibration=calibration,
                             **DEPTH[variant])
    return PruningConfig(method="structured", target=kind, sparsity=level, calibration=calibration, **WIDTH[variant])


def applies(setting: str, variant: str) -> bool:
    return (variant in DEPTH) == (SETTINGS[setting][0] == "depth")


def rows_to_run(setup: dict) -> list[tuple[str, str]]:
    pairs = [(s, v) for s in setup["settings"] for v in setup["variants"] if v != REFERENCE and applies(s, v)]
    return pairs + ([("reference", REFERENCE)] if REFERENCE in setup["variants"] else [])


def decode_speed(dense, pruned, rounds: int = 3, new_tokens: int = 16) -> dict:
    """Median decode tokens/s at batch 1 (cached one-token steps after a 4-token prompt), dense vs pruned."""
    from structured import decode_bytes, greedy_decode

    prompt = torch.randint(3, dense.get_input_embeddings().num_embeddings, (1, 4),
                           generator=torch.Generator().manual_seed(0))
    times = {"dense": [], "pruned": []}
    for model in (dense, pruned):
        greedy_decode(model, prompt, 2, "wall")
    for _ in range(rounds):
        for name, model in (("dense", dense), ("pruned", pruned)):
            times[name].append(greedy_decode(model, prompt, new_tokens, "wall")[1])
    speedup = statistics.median(times["dense"]) / statistics.median(times["pruned"])
    ideal = decode_bytes(dense) / decode_bytes(pruned)
    return {"speedup": speedup, "ideal": ideal, "ratio": speedup / ideal}


def run_row(dense, windows, eval_tokens, setup, setting: str, variant: str, speed: bool) -> dict:
    """Prune a copy of the dense model with one configuration; measure perplexity and time."""
    cal_n, cal_len = setup["calibration"]
    config = config_for(setting, variant, len(decoder_layers(dense)),
                        {"source": setup["text"], "num_samples": cal_n, "seq_len": cal_len})
    pruned_model = copy.deepcopy(dense)
    started = time.perf_counter()
    report = prune_model(pruned_model, config, windows=windows, progress=False)
    seconds = time.perf_counter() - started
    eval_n, eval_len = setup["evaluation"]
    row = {"setting": setting, "variant": variant, "config": config.to_dict(),
           "parameters_removed": report.parameters_removed,
           "perplexity": perplexity(pruned_model, eval_tokens, eval_len, eval_n)["perplexity"],
           "prune_seconds": seconds, "method_seconds": sum(r.method_seconds for r in report.layers),
           "layers": len(report.layers),
           "details": {k: v for k, v in report.details.items() if k != "layer_shapes"}}
    if speed and setting != "reference":
        row["speed"] = decode_speed(dense, pruned_model)
    del pruned_model
    return row


def timing_rows(model_name: str, dense, windows, setup, defaults: dict[str, str], rounds: int) -> list[dict]:
    """Prune only, in alternating rounds: SparseGPT 50% and the default configuration of each setting; CPU
    time per prune and per decoder layer (:func:`common.timed_prunes`)."""
    cal_n, cal_len = setup["calibration"]
    calibration = {"source": setup["text"], "num_samples": cal_n, "seq_len": cal_len}
    runs = [("reference", REFERENCE)] + [(s, defaults[SETTINGS[s][0]]) for s in setup["settings"]]
    configs = {f"{setting} {variant}": config_for(setting, variant, len(decoder_layers(dense)), calibration)
               for setting, variant in runs}
    timed = common.timed_prunes(dense, windows, configs, rounds, model_name)
    rows = []
    for (setting, variant), values in zip(runs, timed.values()):
        rows.append({"model": model_name, "setting": setting, "variant": variant, **values,
                     "cpu_seconds_per_layer": values["prune_cpu_seconds"] / values["layers"]})
    reference = rows[0]["prune_cpu_seconds"]
    for row in rows:
        row["vs_sparsegpt"] = f"{row['prune_cpu_seconds'] / reference:.2f}x"
    return rows


TIMING_COLUMNS = [("model", "model"), ("setting", "setting"), ("variant", "configuration"),
                  ("prune_cpu_seconds", "prune CPU s"), ("cpu_seconds_per_layer", "CPU s / layer"),
                  ("method_seconds", "method s"), ("prune_wall_seconds", "wall s"), ("vs_sparsegpt", "vs SparseGPT")]


def annotate(rows: list[dict]) -> None:
    """``vs dense``, ``increase / today's`` and the decode column, per model and setting."""
    by_key = {(r["model"], r["setting"], r["variant"]): r for r in rows}
    for row in rows:
        row["removed"] = f"{row['parameters_removed']:.1%}" if "parameters_removed" in row else ""
        dense = by_key.get((row["model"], "dense", "dense"))
        row["vs_dense"] = f"{row['perplexity'] / dense['perplexity']:.3f}x" if dense else ""
        row["vs_today"] = ""
        if row["setting"] in SETTINGS and dense:
            today = by_key.get((row["model"], row["setting"], TODAY[SETTINGS[row["setting"]][0]]))
            if today:
                base = today["perplexity"] / dense["perplexity"] - 1
                row["vs_today"] = f"{(row['perplexity'] / dense['perplexity'] - 1) / base:.3f}"
        speed = row.get("speed")
        row["decode"] = f"{speed['speedup']:.2f}x / {speed['ideal']:.2f}x / {speed['ratio']:.2f}" if speed else ""


def summary(rows: list[dict], defaults: dict[str, str]) -> list[str]:
    """The issue's targets: the default's perplexity increase <= half of today's; prune time <= SparseGPT's."""
    lines = []
    by_key = {(r["model"], r["setting"], r["variant"]): r for r in rows}
    for model in dict.fromkeys(r["model"] for r in rows):
        dense = by_key.get((model, "dense", "dense"))
        reference = by_key.get((model, "reference", REFERENCE))
        for setting, (kind, _) in SETTINGS.items():
            today = by_key.get((model, setting, TODAY[kind]))
            default = by_key.get((model, setting, defaults[kind]))
            if not (dense and today and default):
                continue
            inc_today = today["perplexity"] / dense["perplexity"] - 1
            inc_default = default["perplexity"] / dense["perplexity"] - 1
            ratio = inc_default / inc_today
            time_note = ""
            if reference:
                time_note = (f"; prune {default['prune_seconds']:.0f} s vs SparseGPT 50% "
                             f"{reference['prune_seconds']:.0f} s "
                             f"({'met' if default['prune_seconds'] <= reference['prune_seconds'] else 'NOT met'})")
            lines.append(f"- {model} {setting}: default `{defaults[kind]}` +{inc_default:.1%} vs today's "
                         f"`{TODAY[kind]}` +{inc_today:.1%}: ratio {ratio:.3f} (target <= 0.5: "
                         f"{'met' if ratio <= 0.5 else 'NOT met'}){time_note}")
            others = [f"`{variant}` {(row['perplexity'] / dense['perplexity'] - 1) / inc_today:.3f}"
                      for (m, st, variant), row in by_key.items()
                      if m == model and st == setting and variant not in (TODAY[kind], defaults[kind])]
            if others:
                lines.append(f"  - other configurations' ratios: {', '.join(others)}")
    return lines


def _defaults() -> dict[str, str]:
    """The library's default configuration, as a variant label per kind."""
    width = PruningConfig(method="structured", sparsity=0.2).options
    depth = PruningConfig(method="depth", num_layers=1).options
    label = f"{width.importance} / {width.update}"
    update = "linear" if depth.update == "auto" else depth.update  # auto: the fold, on both (pre-norm) models
    return {"mlp": label, "both": label, "depth": f"{depth.selection} / {update}"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.table_arguments(parser, "SmolLM2 only, 2 settings, 4 rows, small windows")
    parser.add_argument("--speed", action="store_true", help="also time batch-1 decode of each pruned model")
    parser.add_argument("--rerun", action="store_true",
                        help="measure the selected rows (and the dense row) again, keeping the others")
    parser.add_argument("--timing", type=int, default=0, metavar="ROUNDS", help=(
        "instead of the quality table: prune-only CPU time of SparseGPT 50%% and the default configurations, "
        "ROUNDS alternating rounds (writes structured_quality-timing.json)"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    name = "structured_quality-quick" if args.quick else "structured_quality"
    text = common.text_source()
    setup = dict(QUICK if args.quick else FULL, text=Path(text).name, threads=args.threads,
                 command=shlex.join(["python", "benchmarks/structured_quality.py", *sys.argv[1:]]))
    common.choose_subsets(parser, args, setup, {"settings": list(SETTINGS), "variants": [*WIDTH, *DEPTH, REFERENCE]})
    if args.timing:
        eval_n, eval_len = setup["evaluation"]
        rows = []
        for model_name in setup["models"]:
            tokenizer = load_tokenizer(model_name)
            _, _, calib_tokens = common.split_tokens(tokenizer, eval_n * eval_len, text)
            windows = sample_windows(calib_tokens, *setup["calibration"], seed=0)
            dense = load_model(model_name, dtype=torch.float32)
            rows += timing_rows(model_name, dense, windows, setup, _defaults(), args.timing)
            del dense
        # other models' rows measured on the same data stay (one run per model adds to one table)
        rows = [r for key, r in common.previous_rows(f"{name}-timing", setup, MEASUREMENT_KEYS, args.fresh).items()
                if key[0] not in setup["models"]] + rows
        common.finish(f"{name}-timing", setup, rows, TIMING_COLUMNS,
                      f"prune only, calibration {setup['calibration'][0]} x {setup['calibration'][1]} tokens, fp32, "
                      f"{args.threads} torch thread(s); CPU time of the process, median of {args.timing} alternating "
                      "round(s)", [])
        return 0
    done = common.previous_rows(name, setup, MEASUREMENT_KEYS, args.fresh)
    rows = []

    def merged() -> list[dict]:
        """This run's rows, the earlier ones of its models, and other models' rows as they are on disk now (so
        runs of different models can go side by side)."""
        keys = {(r["model"], r["setting"], r["variant"]) for r in rows}
        others = {key: r for key, r in common.previous_rows(name, setup, MEASUREMENT_KEYS, False).items()
                  if key[0] not in setup["models"]}
        combined = rows + [r for key, r in {**done, **others}.items() if key not in keys]
        settings = ["dense", *SETTINGS, "reference"]
        variants = ["dense", *WIDTH, *DEPTH, REFERENCE]
        models = list(dict.fromkeys(r["model"] for r in combined))
        return sorted(combined, key=lambda r: (models.index(r["model"]), settings.index(r["setting"]),
                                               variants.index(r["variant"])))

    eval_n, eval_len = setup["evaluation"]
    for model_name in setup["models"]:
        tokenizer = load_tokenizer(model_name)
        _, eval_tokens, calib_tokens = common.split_tokens(tokenizer, eval_n * eval_len, text)
        windows = sample_windows(calib_tokens, *setup["calibration"], seed=0)
        dense = load_model(model_name, dtype=torch.float32)
        for setting, variant in [("dense", "dense")] + rows_to_run(setup):
            row = None if args.rerun else done.get((model_name, setting, variant))
            if row is None or (args.speed and setting in SETTINGS and "speed" not in row):
                row = ({"setting": setting, "variant": variant,
                        "perplexity": perplexity(dense, eval_tokens, eval_len, eval_n)["perplexity"]}
                       if setting == "dense" else
                       run_row(dense, windows, eval_tokens, setup, setting, variant, args.speed))
                row["model"] = model_name
            rows.append(row)
            print(f"{model_name} {setting} {variant}: ppl {row['perplexity']:.3f} "
                  f"({row.get('prune_seconds', 0):.0f} s)", file=sys.stderr, flush=True)
            common.write_results(name, setup, merged())  # after every row: an interrupted run resumes
        del dense
    rows = merged()
    annotate(rows)
    common.finish(name, setup, rows, COLUMNS,
                  f"calibration {setup['calibration'][0]} x {setup['calibration'][1]} tokens (seeded random windows "
                  f"after the evaluation tokens), evaluation {eval_n} x {eval_len} tokens (first windows) of "
                  f"{setup['text']}; fp32, {args.threads} torch thread(s)", summary(rows, _defaults()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
