"""``pruning-hf eval``: evaluate models on identical data; one table with ratios against the first."""

from __future__ import annotations

from ..workflows.compare import compare_models
from .common import CLIError, add_measurements, add_model_loading, check_report_path, eval_default, hf_kwargs, \
    measurement_settings, split

__all__ = ["add", "run"]


def add(sub) -> None:
    parser = sub.add_parser(
        "eval", help="evaluate models on identical data; one table with ratios against the first",
        description="Evaluate each MODEL (Hub id, local folder, or embedded:NAME) in one process on the same "
                    "text and tasks, and print one table with ratios against the first MODEL (the baseline).")
    parser.add_argument("models", nargs="+", metavar="MODEL")
    parser.add_argument("--names", default=None, help="comma-separated display names (default: the MODEL arguments)")
    data = parser.add_argument_group("data")
    data.add_argument("--text", default=eval_default("text"),
                      help="perplexity text: embedded[@test] | FILE | FOLDER | HUB_ID[:CONFIG][@SPLIT] "
                           f"(default {eval_default('text')})")
    data.add_argument("--text-column", default=eval_default("text_column"))
    data.add_argument("--seq-len", type=int, default=eval_default("seq_len"),
                      help=f"tokens per perplexity window (default {eval_default('seq_len')})")
    data.add_argument("--max-windows", type=int, default=eval_default("max_windows"),
                      help=f"perplexity windows (default {eval_default('max_windows')})")
    data.add_argument("--batch-size", type=int, default=eval_default("batch_size"), help="sequences per forward pass")
    add_measurements(parser.add_argument_group("measurements"))
    out = parser.add_argument_group("output")
    out.add_argument("--json", required=True, help="write the full report (JSON) here")
    out.add_argument("--markdown", default=None, help="also write the markdown table here")
    add_model_loading(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=run)


def run(args) -> int:
    names = split(args.names) or list(args.models)
    if len(names) != len(args.models):
        raise CLIError(f"--names gives {len(names)} names for {len(args.models)} models")
    if len(set(names)) != len(names):
        raise CLIError(f"model names must be unique, got {names}; set --names")
    check_report_path(args.json, "--json")
    if args.markdown:
        check_report_path(args.markdown, "--markdown")
    settings = measurement_settings(args, text=args.text, text_column=args.text_column, seq_len=args.seq_len,
                                    max_windows=args.max_windows, batch_size=args.batch_size)
    report = compare_models(dict(zip(names, args.models)), config=settings, load_kwargs=hf_kwargs(args))
    report.save(args.json, args.markdown)
    print(report.to_markdown())
    print(f"\nreport written to {args.json}" + (f" and {args.markdown}" if args.markdown else ""))
    return 0
