"""``pruning-hf sweep``: prune at many levels, measure each, plot the trade-off, recommend one point."""

from __future__ import annotations

import sys

from ..methods import get_method
from ..workflows.pareto import OBJECTIVES
from ..workflows.sweep import sweep
from .common import CLIError, add_config_fields, add_energy, add_model_loading, config_values, eval_default, hf_kwargs, \
    split

__all__ = ["add", "run"]


def add(sub) -> None:
    parser = sub.add_parser("sweep", help="prune at many levels, measure each, plot the trade-off, recommend one",
                            description="Prune MODEL at every (method, pattern, sparsity) point with shared calibration "
                                        "and evaluation data; write OUTPUT/sweep.json/.csv/.md and PNG plots; "
                                        "recommend the best point within --budget. Rerunning resumes.")
    parser.add_argument("model")
    parser.add_argument("--methods", default="magnitude,wanda,sparsegpt", help="comma-separated methods")
    parser.add_argument("--sparsities", default="0.1,0.2,...,0.7",
                        help="comma-separated levels; '...' continues the step (default 0.1,0.2,...,0.7)")
    parser.add_argument("--patterns", default="unstructured", help="comma-separated: unstructured, 2:4, 4:8 ...")
    add_config_fields(parser, ("calibration", "options"))
    ev = parser.add_argument_group("evaluation (same data for every point)")
    ev.add_argument("--eval-text", default=eval_default("text"))
    ev.add_argument("--eval-seq-len", type=int, default=eval_default("seq_len"))
    ev.add_argument("--eval-windows", type=int, default=eval_default("max_windows"))
    ev.add_argument("--tasks", default=None,
                    help="accuracy tasks (piqa, arc_easy, ... or NAME=FILE.jsonl); budgets may use NAME_acc>=VALUE")
    ev.add_argument("--task-limit", type=int, default=None, help="first N examples of each task")
    ev.add_argument("--no-efficiency", action="store_true", help="skip latency and tokens/s")
    add_energy(ev)
    rec = parser.add_argument_group("recommendation")
    rec.add_argument("--budget", default="ppl_increase<=10%",
                     help="comma-separated METRIC<=VALUE terms, e.g. 'ppl_increase<=10%%' (default)")
    rec.add_argument("--objective", default="smallest", choices=list(OBJECTIVES))
    rec.add_argument("--save-best", default=None, metavar="DIR", help="also save the recommended point as a checkpoint")
    add_model_loading(parser)
    parser.add_argument("--output", default="sweep", help="folder for results and plots (default sweep/)")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


def run(args) -> int:
    chosen = split(args.methods) or []
    values = config_values(args)
    calibration = {path[1]: value for path, value in values.items() if path[0] == "calibration"}
    options = {path[1]: value for path, value in values.items() if path[0] == "options"}
    per_method = {method: {k: v for k, v in options.items() if k in get_method(method).option_names()}
                  for method in chosen}
    unused = sorted(set(options) - {k for opts in per_method.values() for k in opts})
    if unused:
        raise CLIError(f"option(s) {unused} belong to none of the swept methods {chosen}")
    evaluation = {"text": args.eval_text, "seq_len": args.eval_seq_len, "max_windows": args.eval_windows,
                  "efficiency": not args.no_efficiency, "energy": args.energy,
                  "country_iso_code": args.country_iso, "tasks": split(args.tasks) or [], "task_limit": args.task_limit,
                  "progress": not args.no_progress}
    try:
        result = sweep(args.model, chosen, args.sparsities, split(args.patterns) or ["unstructured"],
                       calibration=calibration, evaluation=evaluation, method_options=per_method, budget=args.budget,
                       objective=args.objective, output=args.output, save_best=args.save_best,
                       hf_kwargs=hf_kwargs(args), progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"pruning-hf sweep: interrupted; the points measured so far are kept in {args.output}/sweep.json; "
              "rerun the same command to resume", file=sys.stderr)
        return 130
    for label, why in result.skipped:
        print(f"skipped {label}: {why}")
    print(f"sweep of {args.model}: {result.measured} point(s) measured, {result.reused} reused from {args.output}\n")
    print(result.table())
    print(f"\nrecommendation ({args.objective}, budget {result.budget}): {result.recommendation['reason']}")
    if result.saved_best:
        print(f"saved the recommended checkpoint to {result.saved_best}")
    print(f"\nwrote {args.output}/sweep.json, sweep.csv, sweep.md, sweep_perplexity.png, sweep_pareto.png")
    return 0
