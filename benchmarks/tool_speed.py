"""The tool's own speed: wall time of `pruning-hf eval` of two SmolLM2-135M models and of `make demo`'s command.

    python benchmarks/tool_speed.py [--baseline REV] [--repeats 1] [--only eval,demo] [--concurrent]

Timed commands (each in a fresh process, as a user runs them; the SmolLM2 cache and a Wanda 50% checkpoint
are made first, untimed, each code version writing its own):

* ``eval``: ``pruning-hf eval embedded:smollm2-135m WANDA50 --seq-len 256 --max-windows 8 --efficiency --energy``
  (the perplexity text is the embedded held-out split);
* ``demo``: the ``pruning-hf prune`` command of the ``demo`` target in the checkout's ``Makefile``.

With ``--baseline REV`` the same commands also run with the code of git revision ``REV`` (extracted with
``git archive`` into a temporary folder, imported through ``PYTHONPATH``), alternating baseline and current
command by command (``--concurrent``: all at once), so both see the same machine load; the table gives each time
and their ratio. The 2-core machines here are shared, so only the ratios of one run are comparable; to tell
an idle-machine number from a loaded one, each run records the CPU time that *other* processes used while it
ran (the machine's busy time from ``/proc/stat`` minus the command's own), and a time counts as an
idle-machine number only when that was under a quarter of one core on average (the 1-min load average before
and after is recorded too, but the command itself raises it). The CPU time of each command (user + system,
all its threads) is recorded too: it depends much less on the load than wall time does, and on an idle 2-core
machine the wall time lies between CPU time / 2 and CPU time.
The perplexities, window counts and paired speed ratios each command reported are recorded as well.
Prints a markdown table and writes ``benchmarks/results/tool_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

MODEL = "embedded:smollm2-135m"
EVAL = ["eval", MODEL, "{pruned}", "--names", "dense,wanda-50", "--seq-len", "256", "--max-windows", "8",
        "--efficiency", "--energy", "--json", "{out}/eval.json", "--no-progress"]


def demo_command(source: Path) -> list[str]:
    """The `pruning-hf prune` arguments of the Makefile's demo target in ``source``."""
    text = (source / "Makefile").read_text()
    recipe = re.search(r"^demo:.*?\n((?:\t.*\n?)+)", text, re.M).group(1)
    line = " ".join(part.strip().rstrip("\\") for part in recipe.splitlines())
    args = shlex.split(line.split("pruning-hf", 1)[1])
    args[args.index("--output") + 1] = "{out}/demo"
    return args + ["--no-progress"]


def _environment(source: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(source), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    found = subprocess.run([sys.executable, "-c", "import pruning_hf; print(pruning_hf.__file__)"], env=env,
                           cwd=source, capture_output=True, text=True, check=True).stdout.strip()
    if not Path(found).resolve().is_relative_to(source.resolve()):
        raise SystemExit(f"PYTHONPATH={source} imports pruning_hf from {found}: the timed code would be the wrong one")
    return env


def _results(out: Path) -> dict:
    """What the timed command printed, from its report: perplexities, windows and the paired speed ratios."""
    path = out / "eval.json" if (out / "eval.json").is_file() else out / "demo" / "evaluation_report.json"
    if not path.is_file():
        return {}
    report = json.loads(path.read_text())
    found = {f"ppl_{m['name']}": round(m["perplexity"]["perplexity"], 3) for m in report["models"]}
    found["eval_windows"] = report["models"][0]["perplexity"]["windows"]
    found["eval_tokens"] = report["models"][0]["perplexity"]["tokens"]
    for name, rows in (report.get("timing_ratios") or {}).items():
        for label, ratio in rows.items():
            found[f"{name}: {label}"] = (f"{ratio['ratio']:.2f}x (IQR {ratio['q1']:.2f}-{ratio['q3']:.2f})"
                                         if ratio["measurable"] else "no measurable difference")
    return found


def start(source: Path, args: list[str], out: Path, pruned: Path) -> dict:
    """Start one timed command (output to ``out/log.txt``)."""
    env = _environment(source)
    command = [sys.executable, "-m", "pruning_hf.cli", *(a.format(out=out, pruned=pruned) for a in args)]
    log = open(out / "log.txt", "w")
    load = os.getloadavg()[0]
    process = subprocess.Popen(command, cwd=out, env=env, stdout=log, stderr=subprocess.STDOUT)
    return {"process": process, "command": command, "out": out, "log": log, "load": load,
            "busy": common.busy_cpu_seconds(), "started": time.perf_counter()}


def finish(running: list[dict], timeout: float | None = None):
    """Yield ``(index, result)`` as each started command ends, timed to its own end: wall and CPU time (its own
    ``rusage``); a command that fails, or runs past ``timeout`` seconds (then killed), yields ``{"failed": why}``."""
    by_pid = {run["process"].pid: (index, run) for index, run in enumerate(running)}
    while by_pid:
        pid, status, usage = os.wait4(-1, os.WNOHANG)
        if pid == 0:
            for index, run in by_pid.values():
                if timeout and time.perf_counter() - run["started"] > timeout and not run.get("killed"):
                    run["process"].kill()
                    run["killed"] = True
            time.sleep(0.2)
            continue
        if pid not in by_pid:
            continue
        index, run = by_pid.pop(pid)
        seconds = time.perf_counter() - run["started"]
        run["log"].close()
        if os.waitstatus_to_exitcode(status):
            why = f"timed out after {timeout:.0f} s" if run.get("killed") else \
                (run["out"] / "log.txt").read_text()[-3000:]
            print(f"{shlex.join(run['command'])} failed: {why}", flush=True)
            yield index, {"failed": why, "seconds": seconds}
            continue
        cpu = usage.ru_utime + usage.ru_stime
        other = common.other_cpu_seconds(run["busy"], cpu)  # with --concurrent: the other timed commands too
        yield index, {"seconds": seconds, "cpu_seconds": cpu, "load_before": run["load"],
                      "load_after": os.getloadavg()[0], "other_cpu_seconds": other,
                      "idle": other is not None and other < common.IDLE_OTHER_CORES * seconds,
                      "results": _results(run["out"])}


def summary(rows: list[dict]) -> list[dict]:
    """One row per command: best current and baseline times (wall, CPU), their ratios, the most other CPU seen."""
    table = []
    for name in dict.fromkeys(row["command"] for row in rows):
        mine = [r for r in rows if r["command"] == name and "failed" not in r]
        current = [r for r in mine if r["code"] == "current"]
        base = [r for r in mine if r["code"] != "current"]
        row = {"command": name, "other_cores": max((r["other_cpu_seconds"] / r["seconds"] for r in mine
                                                    if r.get("other_cpu_seconds") is not None), default=None),
               "idle": bool(mine) and all(r["idle"] for r in mine)}
        if current:
            row.update(current_s=min(r["seconds"] for r in current), current_cpu_s=min(r["cpu_seconds"] for r in current))
        if base:
            row.update(baseline_s=min(r["seconds"] for r in base), baseline_cpu_s=min(r["cpu_seconds"] for r in base))
        if current and base:
            row.update(ratio=row["current_s"] / row["baseline_s"], cpu_ratio=row["current_cpu_s"] / row["baseline_cpu_s"])
        table.append(row)
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=None, help="git revision to compare with (e.g. HEAD~3)")
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs per command and code version")
    parser.add_argument("--only", default="eval,demo", help="comma-separated: eval, demo")
    parser.add_argument("--concurrent", action="store_true", help=(
        "start every command (each code version) at once instead of one after the other: on a machine whose load "
        "changes, both versions then see the same load; the one that ends first frees the CPU for the others, so "
        "the ratio understates a speed-up"))
    parser.add_argument("--timeout", type=float, default=None, help="seconds after which a command is killed "
                        "(recorded as failed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tool_speed_") as tmp:
        tmp = Path(tmp)
        sources = {"current": ROOT}
        if args.baseline:
            sources[f"baseline {args.baseline}"] = tmp / "baseline"
            sources[f"baseline {args.baseline}"].mkdir()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline], check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(tmp / "baseline")], input=archive, check=True)
        only = [n.strip() for n in args.only.split(",") if n.strip()]
        # each code version evaluates a checkpoint it wrote itself (older code may not read newer config keys)
        pruned = {label: tmp / f"wanda-50-{label.replace(' ', '_')}" for label in sources}
        for label, source in sources.items() if "eval" in only else ():
            setup = [MODEL, "--method", "wanda", "--sparsity", "0.5", "--calibration", "embedded", "--num-samples",
                     "8", "--seq-len", "256", "--output", str(pruned[label]), "--no-energy", "--no-progress"]
            subprocess.run([sys.executable, "-m", "pruning_hf.cli", "prune", *setup], check=True, capture_output=True,
                           cwd=source, env=_environment(source))
        commands = {"eval": EVAL}
        rows, jobs = [], []
        for name in only:
            for repeat in range(args.repeats):
                for label, source in sources.items():  # alternating: baseline and current see the same load
                    command = commands.get(name) or demo_command(source)
                    out = tmp / f"{name}-{label.replace(' ', '_')}-{repeat}"
                    out.mkdir()
                    shown = shlex.join(["pruning-hf", *command]).replace(str(pruned[label]), "WANDA50")
                    jobs.append(({"command": name, "code": label, "repeat": repeat, "args": shown,
                                  "concurrent": args.concurrent}, (source, command, out, pruned[label])))
        batches = [jobs] if args.concurrent else [[job] for job in jobs]
        setup = {"model": MODEL, "baseline": args.baseline, "repeats": args.repeats, "concurrent": args.concurrent,
                 "eval": "8 windows x 256 tokens of embedded@test, 2 models"}
        for batch in batches:
            for index, result in finish([start(*how) for _, how in batch], args.timeout):
                row = {**batch[index][0], **result}
                rows.append(row)
                if "failed" not in result:
                    others = result["other_cpu_seconds"]
                    print(f"{row['command']} ({row['code']}): {result['seconds']:.1f} s wall, "
                          f"{result['cpu_seconds']:.1f} s CPU, other processes "
                          + (f"{others:.1f} CPU s" if others is not None else "unknown"), flush=True)
                common.write_results("tool_speed", setup, rows + [{"summary": summary(rows)}])  # kept if stopped
    table_rows = summary(rows)
    print()
    print(common.markdown_table(table_rows, [("command", "command"), ("baseline_s", f"baseline {args.baseline} (s)"),
                                             ("current_s", "current (s)"), ("ratio", "current / baseline"),
                                             ("baseline_cpu_s", "baseline CPU (s)"), ("current_cpu_s", "current CPU (s)"),
                                             ("cpu_ratio", "CPU current / baseline"),
                                             ("other_cores", "other processes' cores (highest run)"),
                                             ("idle", f"idle (others < {common.IDLE_OTHER_CORES} core)")]))
    for name in dict.fromkeys(row["command"] for row in rows):
        print(f"\n`{name}`: {next(r['args'] for r in rows if r['command'] == name and r['code'] == 'current')}")
        for row in (r for r in rows if r["command"] == name):
            print(f"  {row['code']}: " + (f"failed ({row['failed'][:200]})" if "failed" in row else
                                          ", ".join(f"{k} {v}" for k, v in row["results"].items())))
    path = common.write_results("tool_speed", setup, rows + [{"summary": table_rows}])
    print(f"\nwrote {os.path.relpath(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
