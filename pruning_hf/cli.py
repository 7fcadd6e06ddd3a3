"""``pruning-hf`` command line.

Bad input gets one line on stderr naming the bad value and the fix, and exit code 2; nothing
expensive (model load, calibration) starts before the arguments are validated.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path

__all__ = ["main", "build_parser"]

EXIT_BAD_INPUT = 2


class CLIError(ValueError):
    """A command-line argument is invalid."""


def _method_option_fields() -> dict[str, dataclasses.Field]:
    """Every option of every registered method, by name (one flag serves all methods that share it)."""
    from .methods import METHODS

    fields: dict[str, dataclasses.Field] = {}
    for method in METHODS.values():
        for f in dataclasses.fields(method.Options):
            fields.setdefault(f.name, f)
    return fields


def _field_type(f: dataclasses.Field):
    hint = f.type if not isinstance(f.type, str) else f.type.split("|")[0].strip()
    return {"float": float, "int": int, "str": str, "bool": bool}.get(getattr(hint, "__name__", hint), str)


def _bool_arg(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _add_model_loading(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model loading (passed to transformers)")
    group.add_argument("--dtype", default="auto", help="torch dtype: auto, float32, bfloat16, float16 (default auto)")
    group.add_argument("--device-map", default=None, help="accelerate device map, e.g. auto, cpu, cuda:0")
    group.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit)")
    group.add_argument("--trust-remote-code", action="store_true", help="allow model code from the Hub (off by default)")


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The PruningConfig flags shared by `prune` and `iterative`."""
    parser.add_argument("model")
    parser.add_argument("--method", required=True, help="pruning method (see `pruning-hf methods`)")
    parser.add_argument("--sparsity", type=float, default=None, help="fraction of weights to remove, in [0, 1)")
    parser.add_argument("--pattern", default="unstructured",
                        help="unstructured, N:M such as 2:4 / 4:8, or blocks block:RxC such as block:4x4")
    parser.add_argument("--scope", default=None, help="layer | row | global (method-dependent)")
    parser.add_argument("--targets", default=None, help="comma-separated module-name patterns to prune")
    parser.add_argument("--ignore", default=None, help="comma-separated module-name patterns to skip")
    beyond = parser.add_argument_group("layer allocation and refinement (any method)")
    beyond.add_argument("--allocation", default="uniform", help="uniform | owl | global: per-layer sparsity")
    beyond.add_argument("--owl-m", type=float, default=None, help="OWL outlier threshold M (default 5)")
    beyond.add_argument("--owl-lambda", type=float, default=None, help="OWL max deviation lambda (default 0.08)")
    beyond.add_argument("--refine", action="store_true", help="training-free mask refinement after each Linear")
    beyond.add_argument("--refine-iterations", type=int, default=None, help="refinement rounds per Linear")
    cal = parser.add_argument_group("calibration")
    cal.add_argument("--calibration", default="embedded",
                     help="embedded | FILE | FOLDER | HUB_ID[:CONFIG][@SPLIT] (default embedded)")
    cal.add_argument("--num-samples", type=int, default=128)
    cal.add_argument("--seq-len", type=int, default=2048)
    cal.add_argument("--seed", type=int, default=0)
    cal.add_argument("--batch-size", type=int, default=8, help="calibration windows per forward pass")
    cal.add_argument("--text-column", default="text")
    options = parser.add_argument_group("method options (validated against the chosen method)")
    for name, f in _method_option_fields().items():
        kind = _field_type(f)
        options.add_argument(f"--{name.replace('_', '-')}", dest=f"option_{name}", default=None,
                             type=_bool_arg if kind is bool else kind,
                             help=f.metadata.get("help", "").replace("%", "%%"))
    _add_model_loading(parser)
    parser.add_argument("--output", required=True, help="folder for the pruned checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_prune(sub) -> None:
    parser = sub.add_parser("prune", help="prune a model and save the checkpoint",
                            description="Prune MODEL (Hub id, local folder, or embedded:NAME) and save it to --output.")
    _add_config_arguments(parser)
    ev = parser.add_argument_group("quick quality check")
    ev.add_argument("--eval-text", default=None, help="text source for dense vs pruned perplexity (e.g. embedded@test)")
    ev.add_argument("--eval-seq-len", type=int, default=512)
    ev.add_argument("--eval-windows", type=int, default=40)
    parser.set_defaults(func=_run_prune)


def _split(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def _config_from_args(args):
    from .config import PruningConfig

    options = {k[len("option_"):]: v for k, v in vars(args).items() if k.startswith("option_") and v is not None}
    beyond = {k: getattr(args, k) for k in ("owl_m", "owl_lambda", "refine_iterations") if getattr(args, k) is not None}
    return PruningConfig(
        method=args.method, sparsity=args.sparsity, pattern=args.pattern, scope=args.scope,
        targets=_split(args.targets), ignore=_split(args.ignore),
        calibration={"source": args.calibration, "num_samples": args.num_samples, "seq_len": args.seq_len,
                     "seed": args.seed, "batch_size": args.batch_size, "text_column": args.text_column},
        allocation=args.allocation, refine=args.refine, **beyond, **options)


def _hf_kwargs(args) -> dict:
    kwargs = {"dtype": args.dtype, "trust_remote_code": args.trust_remote_code}
    if args.device_map:
        kwargs["device_map"] = args.device_map
    if args.revision:
        kwargs["revision"] = args.revision
    return kwargs


def _run_prune(args) -> int:
    from .calibration import load_texts
    from .evaluation import text_perplexity
    from .modeling import load_model, load_tokenizer, prune, resolve_name
    from .storage import check_output_dir

    config = _config_from_args(args)
    check_output_dir(Path(args.output).absolute())
    if config.needs_calibration:
        load_texts(config.calibration.source, config.calibration.text_column)
    if args.eval_text:
        load_texts(args.eval_text)
    name = resolve_name(args.model)
    tokenizer = load_tokenizer(name, **_hf_kwargs(args))
    model = load_model(name, **_hf_kwargs(args))
    progress = not args.no_progress
    rows = []

    def measure(label: str) -> None:
        if args.eval_text:
            result = text_perplexity(model, tokenizer, args.eval_text, args.eval_seq_len, args.eval_windows,
                                     progress=progress)
            rows.append((label, result))

    measure("dense")
    report = prune(model, config, tokenizer, progress=progress)
    measure(config.describe())
    model.save_pretrained(args.output)
    print(f"pruned {args.model} with {config.describe()}: {report.sparsity:.2%} of {report.targeted_weights:,} "
          f"targeted weights removed in {report.total_seconds:.1f} s; saved to {args.output}")
    if rows:
        first = rows[0][1]
        print(f"\nperplexity on {args.eval_text} ({first['windows']} windows x {first['seq_len']} tokens, "
              f"{first['tokens']:,} predicted tokens):\n")
        print("| model | perplexity | vs dense |\n|---|---|---|")
        for label, result in rows:
            print(f"| {label} | {result['perplexity']:.3f} | {result['perplexity'] / first['perplexity']:.3f}x |")
    return 0


def _add_iterative(sub) -> None:
    parser = sub.add_parser(
        "iterative", help="raise sparsity in steps, keep the last model within a perplexity budget",
        description="Prune MODEL in rising sparsity steps (up to --sparsity, or --steps), measure perplexity on a "
                    "validation slice after each, stop at the first step over --max-ppl-increase, and save the "
                    "last model that met it to --output.")
    _add_config_arguments(parser)
    it = parser.add_argument_group("steps and validation budget")
    it.add_argument("--step", type=float, default=0.1,
                    help="sparsity increment (default 0.1): step, 2 step, ... up to --sparsity")
    it.add_argument("--steps", default=None, help="explicit comma-separated sparsities, e.g. 0.3,0.4,0.5,0.6")
    it.add_argument("--max-ppl-increase", type=float, default=0.10,
                    help="budget: relative perplexity increase over dense (default 0.10 = +10%%)")
    it.add_argument("--validation", default="embedded@test", help="validation text source (default embedded@test)")
    it.add_argument("--validation-seq-len", type=int, default=512)
    it.add_argument("--validation-windows", type=int, default=16)
    parser.set_defaults(func=_run_iterative)


def _run_iterative(args) -> int:
    from .calibration import load_texts
    from .iterative import iterative_prune
    from .modeling import load_model, load_tokenizer, resolve_name
    from .storage import check_output_dir

    try:
        steps = [float(part) for part in _split(args.steps)] if args.steps else None
    except ValueError:
        raise CLIError(f"--steps must be comma-separated numbers such as 0.3,0.4,0.5, got {args.steps!r}") from None
    if args.sparsity is None and steps:
        args.sparsity = steps[-1]
    config = _config_from_args(args)
    check_output_dir(Path(args.output).absolute())
    if config.needs_calibration:
        load_texts(config.calibration.source, config.calibration.text_column)
    load_texts(args.validation)
    name = resolve_name(args.model)
    tokenizer = load_tokenizer(name, **_hf_kwargs(args))
    model = load_model(name, **_hf_kwargs(args))
    result = iterative_prune(model, config, args.validation, tokenizer=tokenizer, steps=steps, step=args.step,
                             max_increase=args.max_ppl_increase, validation_seq_len=args.validation_seq_len,
                             validation_windows=args.validation_windows, progress=not args.no_progress)
    print(f"validation: {args.validation} ({result.validation_tokens:,} predicted tokens), dense perplexity "
          f"{result.dense_perplexity:.3f}, budget +{args.max_ppl_increase:.1%}\n")
    print("| sparsity | perplexity | vs dense | within budget |\n|---|---|---|---|")
    for step in result.steps:
        within = "yes" if step.accepted else "no"
        print(f"| {step.sparsity:.0%} | {step.perplexity:.3f} | {step.increase:+.1%} | {within} |")
    model.save_pretrained(args.output)
    kept = f"sparsity {result.sparsity:.0%}" if result.sparsity else "the dense model (no step met the budget)"
    print(f"\nkept {kept}, perplexity {result.perplexity:.3f}; saved to {args.output}")
    return 0


def _add_methods(sub) -> None:
    parser = sub.add_parser("methods", help="list pruning methods and their options")
    parser.set_defaults(func=_run_methods)


def _run_methods(args) -> int:
    from .methods import METHODS

    for name, method in METHODS.items():
        doc = (method.__doc__ or "").strip().splitlines()[0]
        print(f"{name}: {doc}")
        for f in dataclasses.fields(method.Options):
            print(f"    --{f.name.replace('_', '-')} (default {f.default!r}): {f.metadata.get('help', '')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pruning-hf", description=__doc__.splitlines()[0].strip("`"))
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_prune, _add_methods, _add_iterative):
        add(sub)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from .architectures import UnsupportedModelError
    from .calibration import DataSourceError
    from .modeling import ModelLoadError
    from .storage import OutputPathError

    return (CLIError, ValueError, DataSourceError, ModelLoadError, OutputPathError, UnsupportedModelError,
            FileNotFoundError, ModuleNotFoundError, PermissionError)


def main(argv: typing.Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except _user_errors() as err:
        print(f"pruning-hf {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"pruning-hf {args.command}: interrupted; no partial output was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
