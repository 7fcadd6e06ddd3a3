"""Shared helpers of the benchmark scripts: data splits, isolated runs, tables, JSON.

Every benchmark prints a markdown table and writes ``benchmarks/results/<name>.json`` holding the
rows plus the set-up (model, data, seq len, windows, calibration, versions) needed to read them.
"""

from __future__ import annotations

import copy
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

_ROOT = Path(__file__).resolve().parents[1]
#: ``../shared/data`` next to the checkout, also found from a git worktree one folder deeper
WIKITEXT = next((p / "shared" / "data" / "wikitext-2-valid.txt" for p in (_ROOT.parent, _ROOT.parent.parent)
                 if (p / "shared" / "data" / "wikitext-2-valid.txt").is_file()),
                _ROOT.parent / "shared" / "data" / "wikitext-2-valid.txt")
RESULTS = Path(__file__).resolve().parent / "results"


def text_source(fallback: str = "embedded") -> str:
    """WikiText-2 validation text when ``../shared`` is present (as a path relative to the current folder, so
    results and tables name no machine-specific prefix), else ``fallback`` (the embedded corpus)."""
    return os.path.relpath(WIKITEXT) if WIKITEXT.is_file() else fallback


def split_tokens(tokenizer, eval_tokens: int, source: str | None = None) -> tuple[str, torch.Tensor, torch.Tensor]:
    """Tokenize ``source``; the first ``eval_tokens`` are for evaluation, the rest for calibration (disjoint)."""
    from pruning_hf.data.text import load_texts, tokenize_texts

    source = source or text_source()
    tokens = tokenize_texts(load_texts(source), tokenizer)
    if tokens.numel() < 2 * eval_tokens:
        raise SystemExit(f"{source} has {tokens.numel()} tokens; need at least {2 * eval_tokens}")
    return source, tokens[:eval_tokens], tokens[eval_tokens:]


def run_isolated(function: Callable[..., dict], *args: Any) -> dict:
    """Run ``function(*args)`` in a fresh process (so peak RSS belongs to that run alone)."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(function, args)


def busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has been busy since boot (all cores, ``/proc/stat``), None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def other_cpu_seconds(busy_before: float | None, own_cpu: float) -> float | None:
    """CPU seconds other processes used since ``busy_before`` (:func:`busy_cpu_seconds`), given the timed
    work's own ``own_cpu`` seconds; None off Linux."""
    busy = busy_cpu_seconds()
    return None if busy is None or busy_before is None else max(0.0, busy - busy_before - own_cpu)


class OtherLoad:
    """``with OtherLoad() as load: ...`` then ``load.cores``: how many cores *other* processes kept busy on average
    while the block ran (the machine's busy time minus this process's CPU time; None off Linux). A timing is an
    idle-machine number when that stays under :data:`IDLE_OTHER_CORES`."""

    def __enter__(self) -> OtherLoad:
        self.busy, self.cpu, self.wall = busy_cpu_seconds(), time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self.wall
        other = other_cpu_seconds(self.busy, time.process_time() - self.cpu)
        self.cores = None if other is None else other / max(wall, 1e-9)


#: a timing is an idle-machine number when other processes used fewer cores than this on average during it
IDLE_OTHER_CORES = 0.25


def peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def environment() -> dict[str, Any]:
    import transformers

    import pruning_hf

    return {"pruning_hf": pruning_hf.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "machine": platform.machine(), "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "cuda": torch.cuda.is_available()}


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """``columns``: (key, header). Floats get 3 significant decimals."""
    def cell(value):
        if isinstance(value, float):
            return f"{value:,.3f}" if abs(value) < 1000 else f"{value:,.0f}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(k)) for k, _ in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, setup: dict[str, Any], rows: list[dict[str, Any]]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")  # readers never see a half-written file
    partial.write_text(json.dumps({"benchmark": name, "setup": setup, "environment": environment(), "rows": rows},
                                  indent=2))
    os.replace(partial, path)
    return path


def timed_prunes(dense: torch.nn.Module, windows: torch.Tensor, configs: dict[str, Any], rounds: int,
                 name: str) -> dict[str, dict[str, float]]:
    """Prune only (no evaluation) a copy of ``dense`` with each of ``configs`` (label -> PruningConfig) in
    ``rounds`` rounds, the order reversed every other round. Per label the medians of this process's CPU time
    (with one torch thread it barely depends on other jobs descheduling this one, unlike wall time), wall time
    and time in the method's maths, the decoder layers pruned and the dense stream's dtype (dense targets)."""
    from pruning_hf.engine import prune_model

    measured: dict[str, list[dict[str, float]]] = {label: [] for label in configs}
    for round_index in range(rounds):
        for label in (list(configs) if round_index % 2 == 0 else list(reversed(configs))):
            model = copy.deepcopy(dense)
            cpu, wall = time.process_time(), time.perf_counter()
            report = prune_model(model, configs[label], windows=windows, progress=False)
            measured[label].append({"cpu": time.process_time() - cpu, "wall": time.perf_counter() - wall,
                                    "method": sum(r.method_seconds for r in report.layers),
                                    "layers": len(report.layers), "dense_dtype": report.dense_dtype})
            print(f"{name} timing {label}: {measured[label][-1]['cpu']:.0f} s CPU", file=sys.stderr, flush=True)
            del model
    return {label: {"prune_cpu_seconds": statistics.median(v["cpu"] for v in values),
                    "prune_wall_seconds": statistics.median(v["wall"] for v in values),
                    "method_seconds": statistics.median(v["method"] for v in values),
                    "layers": values[0]["layers"], "dense_dtype": values[0]["dense_dtype"], "rounds": rounds}
            for label, values in measured.items()}


def finish(name: str, setup: dict[str, Any], rows: list[dict[str, Any]], columns: list[tuple[str, str]],
           header: str, lines: list[str]) -> Path:
    """Print ``header``, the markdown table of ``rows`` and the summary ``lines``; write them with the rows."""
    table = markdown_table(rows, columns)
    print(header + "\n")
    print(table + "\n\n" + "\n".join(lines))
    path = write_results(name, dict(setup, summary=lines, table=table), rows)
    print(f"\nwrote {path.relative_to(RESULTS.parent.parent)}")
    return path


def table_arguments(parser, quick: str) -> None:
    """The flags every resumable quality-table benchmark takes (``quick``: what --quick runs)."""
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--models", default=None, help="comma-separated model names (default: both embedded models)")
    parser.add_argument("--settings", default=None, help="comma-separated subset of the settings")
    parser.add_argument("--variants", default=None, help="comma-separated subset of the configurations")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a busy 2-core machine no slower, and steadier)")
    parser.add_argument("--fresh", action="store_true", help="ignore rows saved by an earlier run")


def choose_subsets(parser, args, setup: dict[str, Any], allowed: dict[str, list[str]]) -> None:
    """Put ``--models`` and each ``--<key>`` subset of ``allowed[key]`` into ``setup`` (unknown names: exit 2)."""
    if args.models:
        setup["models"] = args.models.split(",")
    for key, names in allowed.items():
        chosen = getattr(args, key)
        if chosen:
            unknown = [item for item in chosen.split(",") if item not in names]
            if unknown:
                parser.error(f"--{key}: unknown {unknown}; choose from {list(names)}")
            setup[key] = chosen.split(",")


def previous_rows(name: str, setup: dict[str, Any], keys: tuple[str, ...], fresh: bool) -> dict[tuple, dict]:
    """Rows of ``benchmarks/results/<name>.json`` measured with the same ``setup`` values of ``keys`` (data,
    windows, threads), by ``(model, setting, variant)``: an interrupted or partial run adds to them."""
    path = RESULTS / f"{name}.json"
    previous = json.loads(path.read_text()) if path.is_file() and not fresh else {}
    if not all(previous.get("setup", {}).get(k) == setup.get(k) for k in keys):
        return {}
    return {(r["model"], r["setting"], r["variant"]): r for r in previous.get("rows", [])}
