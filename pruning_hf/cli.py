"""``pruning-hf`` command line.

Bad input gets one line on stderr naming the bad value and the fix, and exit code 2; nothing
expensive (model load, calibration) starts before the arguments are validated.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing
from pathlib import Path

__all__ = ["main", "build_parser"]

EXIT_BAD_INPUT = 2


class CLIError(ValueError):
    """A command-line argument is invalid."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (no usage dump) and exit code 2; subcommands inherit it."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


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
    group.add_argument("--max-memory", default=None, type=_max_memory,
                       help="memory per device for --device-map auto, e.g. cpu=8GiB or 0=20GiB,cpu=60GiB; the rest is "
                            "offloaded to --offload-folder and pruned one decoder layer at a time")
    group.add_argument("--offload-folder", default=None, help="folder for weights offloaded to disk")


def _max_memory(text: str) -> dict:
    """``cpu=8GiB,0=20GiB`` -> ``{"cpu": "8GiB", 0: "20GiB"}`` (accelerate's max_memory)."""
    budget = {}
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        device, _, amount = part.partition("=")
        if not amount or not (device in ("cpu", "disk", "mps") or device.isdigit()):
            raise argparse.ArgumentTypeError(f"{part!r} is not DEVICE=AMOUNT (DEVICE: cpu or a GPU index; e.g. cpu=8GiB)")
        budget[int(device) if device.isdigit() else device] = amount
    return budget


def _add_method_options(parser: argparse.ArgumentParser) -> None:
    options = parser.add_argument_group("method options (validated against the chosen method)")
    for name, f in _method_option_fields().items():
        kind = _field_type(f)
        options.add_argument(f"--{name.replace('_', '-')}", dest=f"option_{name}", default=None,
                             type=_bool_arg if kind is bool else kind,
                             help=f.metadata.get("help", "").replace("%", "%%"))


def _option_args(args) -> dict:
    return {k[len("option_"):]: v for k, v in vars(args).items() if k.startswith("option_") and v is not None}


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The PruningConfig flags shared by `prune` and `iterative`, plus model loading and --output."""
    parser.add_argument("model")
    parser.add_argument("--method", required=True, help="pruning method (see `pruning-hf methods`)")
    parser.add_argument("--sparsity", type=float, default=None, help="fraction of weights to remove, in [0, 1)")
    parser.add_argument("--pattern", default="unstructured",
                        help="unstructured, N:M such as 2:4 / 4:8, or blocks block:RxC such as block:4x4")
    parser.add_argument("--scope", default=None, help="layer | row | global (method-dependent)")
    parser.add_argument("--targets", default=None, help="comma-separated module-name patterns to prune")
    parser.add_argument("--ignore", default=None, help="comma-separated module-name patterns to skip")
    beyond = parser.add_argument_group("layer allocation and refinement")
    beyond.add_argument("--allocation", default="uniform",
                        help="how sparsity is spread over layers: uniform | owl | global (magnitude, wanda, sparsegpt) "
                             "| adaptive (structured)")
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
    _add_method_options(parser)
    _add_model_loading(parser)
    parser.add_argument("--output", required=True, help="folder for the pruned checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_prune(sub) -> None:
    parser = sub.add_parser("prune", help="prune a model and save the checkpoint",
                            description="Prune MODEL (Hub id, local folder, or embedded:NAME) and save it to --output.")
    _add_config_arguments(parser)
    ev = parser.add_argument_group("dense vs pruned evaluation (any of these turns it on; report saved in --output)")
    ev.add_argument("--eval-text", default=None, help="text source for dense vs pruned perplexity (default embedded@test)")
    ev.add_argument("--eval-seq-len", type=int, default=512)
    ev.add_argument("--eval-windows", type=int, default=40)
    _add_measurements(ev, prefix="eval-")
    parser.add_argument("--compress", action="store_true",
                        help="store pruned weights compressed (values + bitmask / N:M indices, ~0.56x at 50%%); "
                             "loading it needs `import pruning_hf`")
    parser.add_argument("--activation-storage", default="cpu",
                        help="where calibration activations wait between layers: cpu, a device, or disk")
    parser.add_argument("--resume", default=None, metavar="DIR",
                        help="checkpoint every finished decoder layer in DIR; rerun the same command to continue "
                             "an interrupted run (magnitude, wanda, sparsegpt; DIR is emptied at the end)")
    parser.set_defaults(func=_run_prune)


def _split(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def _config_from_args(args):
    from .config import PruningConfig

    options = _option_args(args)
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
    if args.max_memory:
        kwargs["max_memory"] = args.max_memory
        kwargs.setdefault("device_map", "auto")
    if args.offload_folder:
        kwargs["offload_folder"] = args.offload_folder
    return kwargs


def _run_prune(args) -> int:
    from .calibration import load_texts
    from .evaluation.report import EvaluationConfig, model_config, prepare_evaluation, prune_and_compare
    from .engine import check_activation_storage
    from .modeling import load_model, load_tokenizer, prune, resolve_name, windows_before_loading
    from .resume import check_resumable
    from .storage import check_output_dir

    config = _config_from_args(args)
    check_output_dir(Path(args.output).absolute())
    check_activation_storage(args.activation_storage)
    if args.resume:
        check_resumable(config, args.resume)
    evaluate = any((args.eval_text, args.eval_tasks, args.efficiency, args.energy))
    settings = EvaluationConfig.coerce(_measurement_settings(
        args, text=args.eval_text or "embedded@test", seq_len=args.eval_seq_len, max_windows=args.eval_windows,
        tasks=args.eval_tasks)) if evaluate else None
    if config.needs_calibration:
        load_texts(config.calibration.source, config.calibration.text_column)
    name = resolve_name(args.model)
    tokenizer = load_tokenizer(name, **_hf_kwargs(args))
    windows = windows_before_loading(config, tokenizer, name, _hf_kwargs(args))
    data = prepare_evaluation(settings, tokenizer, model_config(name, _hf_kwargs(args))) if evaluate else None
    model = load_model(name, **_hf_kwargs(args))
    progress = not args.no_progress
    prune_options = {"activation_storage": args.activation_storage, "windows": windows, "resume_dir": args.resume}
    if data is not None:
        evaluation = prune_and_compare(model, tokenizer, config, data, progress=progress, prune_options=prune_options)
        report = model.pruning_report
    else:
        evaluation, report = None, prune(model, config, tokenizer, progress=progress, **prune_options)
    model.save_pretrained(args.output, compress=args.compress)
    shrunk = f" ({report.parameters_removed:.1%} of all parameters physically removed)" if report.parameters_removed else ""
    print(f"pruned {args.model} with {config.describe()}: {report.sparsity:.2%} of {report.targeted_weights:,} "
          f"targeted weights removed{shrunk} in {report.total_seconds:.1f} s; saved to {args.output}")
    if evaluation is not None:
        print(f"\n{evaluation.to_markdown()}\n\n(full report: {Path(args.output) / 'evaluation_report.json'})")
    return 0


def _add_measurements(group, prefix: str = "") -> None:
    """Flags shared by `eval` and `prune`: tasks, efficiency, energy (``prefix`` avoids clashes in `prune`)."""
    from .evaluation.energy import DEFAULT_COUNTRY_ISO

    group.add_argument(f"--{prefix}tasks", default=None,
                       help="comma-separated tasks: piqa, arc_easy, arc_challenge, hellaswag, boolq, winogrande, "
                            "lambada (Hub, via datasets) or NAME=FILE.jsonl (local; see pruning_hf.evaluation.tasks)")
    group.add_argument(f"--{prefix}task-limit", dest="task_limit", type=int, default=None,
                       help="first N examples of each task")
    group.add_argument("--efficiency", action="store_true",
                       help="also measure latency, tokens/s, peak memory, checkpoint size and FLOPs")
    group.add_argument("--repeats", type=int, default=5, help="timed repeats per speed measurement (median)")
    group.add_argument("--energy", action="store_true",
                       help="also measure energy and CO2e with codecarbon (offline; says whether RAPL or an estimate)")
    group.add_argument("--country-iso", default=DEFAULT_COUNTRY_ISO,
                       help=f"ISO alpha-3 country of the electricity grid for CO2e (default {DEFAULT_COUNTRY_ISO})")
    group.add_argument("--no-samples", action="store_true", help="skip the greedy generation samples")


def _measurement_settings(args, **given) -> dict:
    return {**given, "task_limit": args.task_limit, "efficiency": args.efficiency, "repeats": args.repeats,
            "energy": args.energy, "country_iso_code": args.country_iso, "samples": not args.no_samples,
            "progress": not args.no_progress}


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


def _add_eval(sub) -> None:
    parser = sub.add_parser(
        "eval", help="evaluate models on identical data; one table with ratios against the first",
        description="Evaluate each MODEL (Hub id, local folder, or embedded:NAME) in one process on the same "
                    "text and tasks, and print one table with ratios against the first MODEL (the baseline).")
    parser.add_argument("models", nargs="+", metavar="MODEL")
    parser.add_argument("--names", default=None, help="comma-separated display names (default: the MODEL arguments)")
    data = parser.add_argument_group("data")
    data.add_argument("--text", default="embedded@test",
                      help="perplexity text: embedded[@test] | FILE | FOLDER | HUB_ID[:CONFIG][@SPLIT] (default embedded@test)")
    data.add_argument("--text-column", default="text")
    data.add_argument("--seq-len", type=int, default=512, help="tokens per perplexity window (default 512)")
    data.add_argument("--max-windows", type=int, default=40, help="perplexity windows (default 40)")
    data.add_argument("--batch-size", type=int, default=4, help="sequences per forward pass")
    _add_measurements(parser.add_argument_group("measurements"))
    out = parser.add_argument_group("output")
    out.add_argument("--json", required=True, help="write the full report (JSON) here")
    out.add_argument("--markdown", default=None, help="also write the markdown table here")
    _add_model_loading(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=_run_eval)


def _check_report_path(path: str, flag: str) -> None:
    target = Path(path)
    if target.is_dir():
        raise CLIError(f"{flag} {path!r} is a folder; give a file path")
    parent = target.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise CLIError(f"{flag} {path!r}: cannot write in {str(parent)!r}")


def _run_eval(args) -> int:
    from .evaluation.report import EvaluationConfig, compare_models

    names = _split(args.names) or list(args.models)
    if len(names) != len(args.models):
        raise CLIError(f"--names gives {len(names)} names for {len(args.models)} models")
    if len(set(names)) != len(names):
        raise CLIError(f"model names must be unique, got {names}; set --names")
    _check_report_path(args.json, "--json")
    if args.markdown:
        _check_report_path(args.markdown, "--markdown")
    settings = EvaluationConfig.coerce(_measurement_settings(
        args, text=args.text, text_column=args.text_column, seq_len=args.seq_len, max_windows=args.max_windows,
        batch_size=args.batch_size, tasks=args.tasks))
    report = compare_models(dict(zip(names, args.models)), config=settings, load_kwargs=_hf_kwargs(args))
    report.save(args.json, args.markdown)
    print(report.to_markdown())
    print(f"\nreport written to {args.json}" + (f" and {args.markdown}" if args.markdown else ""))
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


def _add_card(sub) -> None:
    parser = sub.add_parser("card", help="(re)render the model card (README.md) of a pruned checkpoint",
                            description="Re-render DIR/README.md from the checkpoint's config, reports and recipe.")
    parser.add_argument("folder", help="saved pruned checkpoint folder")
    parser.add_argument("--repo-id", default=None, help="Hub repo the card should name (USER/NAME)")
    parser.set_defaults(func=_run_card)


def _run_card(args) -> int:
    from .cards import write_model_card

    if not (Path(args.folder) / "config.json").is_file():
        raise FileNotFoundError(f"{args.folder!r} is not a saved checkpoint folder (no config.json)")
    path = write_model_card(args.folder, repo_id=args.repo_id, location=args.folder)
    if path is None:
        raise CLIError(f"{args.folder!r} holds no pruning_config in config.json: it is not a pruned checkpoint")
    print(f"wrote {path}")
    return 0


def _add_push(sub) -> None:
    parser = sub.add_parser("push", help="upload a pruned checkpoint folder to the Hugging Face Hub",
                            description="Create USER/NAME (if needed) and upload DIR with its model card. The token "
                                        "comes from --token, HF_TOKEN or `hf auth login`, and is never printed.")
    parser.add_argument("folder", help="saved pruned checkpoint folder")
    parser.add_argument("repo_id", help="USER/NAME or ORG/NAME")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--token", default=None, help="Hub token (prefer HF_TOKEN: arguments show in process lists)")
    parser.add_argument("--commit-message", default=None)
    parser.set_defaults(func=_run_push)


def _run_push(args) -> int:
    from .hub import push_folder

    url = push_folder(args.folder, args.repo_id, private=args.private or None, token=args.token,
                      commit_message=args.commit_message)
    print(f"pushed {args.folder} to {url}")
    return 0


def _add_run(sub) -> None:
    parser = sub.add_parser("run", help="run a recipe YAML end to end (prune, measure, save, check, push)",
                            description="Run RECIPE: load the model, measure it dense, prune, measure, save the "
                                        "checkpoint with its card and recipe.yaml; optionally check and push.")
    parser.add_argument("recipe", help="recipe YAML file (see recipes/)")
    parser.add_argument("--check", action="store_true",
                        help="compare with the recipe's expected values; exit 1 and print a diff when outside tolerance")
    parser.add_argument("--quick", action="store_true", help="apply the recipe's quick overrides (CI-sized run)")
    parser.add_argument("--output", default=None, help="checkpoint folder (default: the recipe's output)")
    parser.add_argument("--push-to-hub", nargs="?", const=True, default=None, metavar="USER/NAME",
                        help="push the result (default repo: the recipe's hub.repo_id); skipped when --check fails")
    parser.add_argument("--token", default=None, help="Hub token (prefer HF_TOKEN)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=_run_recipe)


def _run_recipe(args) -> int:
    from .measurements import is_metric
    from .recipes import Recipe

    recipe = Recipe.from_yaml(args.recipe, quick=args.quick)
    result = recipe.run(check=args.check, push_to_hub=args.push_to_hub, output=args.output, token=args.token,
                        progress=not args.no_progress)
    print(f"recipe {recipe.name}{' (quick)' if args.quick else ''}: {recipe.pruning.describe()} on {recipe.model.id}; "
          f"saved to {result.output}\n")
    print("| metric | value |\n|---|---|")
    for name, value in result.metrics.items():
        if is_metric(name.removeprefix("dense_")):
            print(f"| {name} | {value:.6g} |")
    if result.url:
        print(f"\npushed to {result.url}")
    if args.check:
        print(f"\nexpected values ({'all within tolerance' if result.passed else 'OUT OF TOLERANCE'}):\n")
        print(result.check_table())
        if not result.passed:
            return 1
    return 0


def _add_sweep(sub) -> None:
    parser = sub.add_parser("sweep", help="prune at many levels, measure each, plot the trade-off, recommend one",
                            description="Prune MODEL at every (method, pattern, sparsity) point with shared calibration "
                                        "and evaluation data; write OUTPUT/sweep.json/.csv/.md and PNG plots; "
                                        "recommend the best point within --budget. Rerunning resumes.")
    parser.add_argument("model")
    parser.add_argument("--methods", default="magnitude,wanda,sparsegpt", help="comma-separated methods")
    parser.add_argument("--sparsities", default="0.1,0.2,...,0.7",
                        help="comma-separated levels; '...' continues the step (default 0.1,0.2,...,0.7)")
    parser.add_argument("--patterns", default="unstructured", help="comma-separated: unstructured, 2:4, 4:8 ...")
    cal = parser.add_argument_group("calibration (shared by all points)")
    cal.add_argument("--calibration", default="embedded", help="embedded | FILE | FOLDER | HUB_ID[:CONFIG][@SPLIT]")
    cal.add_argument("--num-samples", type=int, default=128)
    cal.add_argument("--seq-len", type=int, default=2048)
    cal.add_argument("--seed", type=int, default=0)
    cal.add_argument("--batch-size", type=int, default=8)
    cal.add_argument("--text-column", default="text")
    _add_method_options(parser)
    ev = parser.add_argument_group("evaluation (same data for every point)")
    ev.add_argument("--eval-text", default="embedded@test")
    ev.add_argument("--eval-seq-len", type=int, default=512)
    ev.add_argument("--eval-windows", type=int, default=40)
    ev.add_argument("--tasks", default=None,
                    help="accuracy tasks (piqa, arc_easy, ... or NAME=FILE.jsonl); budgets may use NAME_acc>=VALUE")
    ev.add_argument("--task-limit", type=int, default=None, help="first N examples of each task")
    ev.add_argument("--no-efficiency", action="store_true", help="skip latency and tokens/s")
    ev.add_argument("--no-energy", action="store_true", help="skip codecarbon energy")
    ev.add_argument("--country-iso", default="USA", help="grid carbon intensity country for codecarbon (ISO alpha-3)")
    rec = parser.add_argument_group("recommendation")
    rec.add_argument("--budget", default="ppl_increase<=10%",
                     help="comma-separated METRIC<=VALUE terms, e.g. 'ppl_increase<=10%%' (default)")
    rec.add_argument("--objective", default="smallest", choices=["smallest", "fastest", "lowest-energy"])
    rec.add_argument("--save-best", default=None, metavar="DIR", help="also save the recommended point as a checkpoint")
    _add_model_loading(parser)
    parser.add_argument("--output", default="sweep", help="folder for results and plots (default sweep/)")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=_run_sweep)


def _sweep_from_args(args, methods: list[str], method_options: dict):
    from .sweep import sweep

    return sweep(
        args.model, methods, args.sparsities, _split(args.patterns) or ["unstructured"],
        calibration={"source": args.calibration, "num_samples": args.num_samples, "seq_len": args.seq_len,
                     "seed": args.seed, "batch_size": args.batch_size, "text_column": args.text_column},
        evaluation={"text": args.eval_text, "seq_len": args.eval_seq_len, "max_windows": args.eval_windows,
                    "efficiency": not args.no_efficiency, "energy": not args.no_energy,
                    "country_iso_code": args.country_iso, "tasks": _split(args.tasks) or [],
                    "task_limit": args.task_limit},
        method_options=method_options, budget=args.budget, objective=args.objective, output=args.output,
        save_best=args.save_best, hf_kwargs=_hf_kwargs(args), progress=not args.no_progress)


def _run_sweep(args) -> int:
    from .methods import get_method

    chosen = _split(args.methods) or []
    options = _option_args(args)
    per_method = {}
    for method in chosen:
        fields = {f.name for f in dataclasses.fields(get_method(method).Options)}
        per_method[method] = {k: v for k, v in options.items() if k in fields}
    unused = sorted(set(options) - {k for opts in per_method.values() for k in opts})
    if unused:
        raise CLIError(f"option(s) {unused} belong to none of the swept methods {chosen}")
    try:
        result = _sweep_from_args(args, chosen, per_method)
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pruning-hf", description=__doc__.splitlines()[0].strip("`"))
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_prune, _add_iterative, _add_eval, _add_methods, _add_sweep, _add_run, _add_card, _add_push):
        add(sub)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from .architectures import UnsupportedModelError
    from .calibration import DataSourceError
    from .modeling import ModelLoadError
    from .storage import OutputPathError

    return (CLIError, ValueError, DataSourceError, ModelLoadError, OutputPathError, UnsupportedModelError,
            FileNotFoundError, ModuleNotFoundError, PermissionError)


def _failures() -> tuple[type[BaseException], ...]:
    from .hub import HubPushError
    from .storage import CheckpointWriteError

    return (HubPushError, CheckpointWriteError)


def main(argv: typing.Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    if getattr(args, "no_progress", False):  # also transformers' "Loading weights" / "Writing shards" bars
        hf_logging.disable_progress_bar()
    try:
        return args.func(args)
    except _user_errors() as err:
        print(f"pruning-hf {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except _failures() as err:  # not the user's input: network, Hub permissions
        print(f"pruning-hf {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"pruning-hf {args.command}: interrupted; no partial output was written", file=sys.stderr)
        return 130
    finally:
        if bars:
            hf_logging.enable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())
