"""What the subcommands share: the parser class, flags derived from PruningConfig's fields, model
loading flags, evaluation flags (defaults from EvaluationConfig), and small argument parsers."""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from pathlib import Path

from ..config import PruningConfig
from ..evaluation.settings import EvaluationConfig

__all__ = ["EXIT_BAD_INPUT", "CLIError", "Parser", "split", "bool_arg", "add_model_loading", "hf_kwargs",
           "add_pruning_command", "add_config_fields", "config_values", "config_from_args", "add_measurements", "measurement_settings",
           "add_energy", "eval_default", "check_report_path"]

EXIT_BAD_INPUT = 2
_CONFIG_DEST = "config:"  # argparse dests of PruningConfig flags: "config:" + the field path


class CLIError(ValueError):
    """A command-line argument is invalid."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (no usage dump) and exit code 2; subcommands inherit it."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def split(text: str | None) -> list[str] | None:
    """``"a, b,c"`` -> ``["a", "b", "c"]``; empty -> None."""
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def bool_arg(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _max_memory(text: str) -> dict:
    """``cpu=8GiB,0=20GiB`` -> ``{"cpu": "8GiB", 0: "20GiB"}`` (accelerate's max_memory)."""
    budget = {}
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        device, _, amount = part.partition("=")
        if not amount or not (device in ("cpu", "disk", "mps") or device.isdigit()):
            raise argparse.ArgumentTypeError(f"{part!r} is not DEVICE=AMOUNT (DEVICE: cpu or a GPU index; e.g. cpu=8GiB)")
        budget[int(device) if device.isdigit() else device] = amount
    return budget


def add_model_loading(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model loading (passed to transformers)")
    group.add_argument("--dtype", default="auto", help="torch dtype: auto, float32, bfloat16, float16 (default auto)")
    group.add_argument("--device-map", default=None, help="accelerate device map, e.g. auto, cpu, cuda:0")
    group.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit)")
    group.add_argument("--trust-remote-code", action="store_true", help="allow model code from the Hub (off by default)")
    group.add_argument("--max-memory", default=None, type=_max_memory, metavar="DEVICE=AMOUNT,...",
                       help="memory per device for --device-map auto, e.g. cpu=8GiB or 0=20GiB,cpu=60GiB; the rest is "
                            "offloaded to --offload-folder and pruned one decoder layer at a time")
    group.add_argument("--offload-folder", default=None, help="folder for weights offloaded to disk")


def hf_kwargs(args) -> dict:
    """``from_pretrained`` keywords from the model-loading flags."""
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


_ARG_TYPES = {"float": float, "int": int, "str": str, "list": split, "bool": bool_arg}
_GROUPS = {(): "pruning", ("calibration",): "calibration", ("options",): "method options (validated against "
                                                                          "the chosen method)"}


def add_pruning_command(parser: argparse.ArgumentParser, output_help: str) -> None:
    """MODEL, the PruningConfig flags, model loading, ``--output`` and ``--no-progress`` (`prune`, `iterative`)."""
    parser.add_argument("model")
    add_config_fields(parser)
    add_model_loading(parser)
    parser.add_argument("--output", required=True, help=output_help)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def add_config_fields(parser: argparse.ArgumentParser, include: tuple[str, ...] = ("config", "calibration", "options"),
                      required: tuple[str, ...] = ("method",)) -> None:
    """One flag per PruningConfig field (:meth:`PruningConfig.cli_fields`); flags not given keep the field default."""
    groups: dict[tuple[str, ...], argparse._ArgumentGroup] = {}
    for cli_field in PruningConfig.cli_fields(include):
        prefix = cli_field.path[:-1]
        group = groups.get(prefix) or groups.setdefault(prefix, parser.add_argument_group(_GROUPS[prefix]))
        shown_default = "" if cli_field.default in (None, False, []) else f" (default: {cli_field.default})"
        common = {"dest": _CONFIG_DEST + ".".join(cli_field.path), "default": argparse.SUPPRESS,
                  "help": (cli_field.help + shown_default).replace("%", "%%")}
        if cli_field.kind == "switch":
            group.add_argument(cli_field.flag, action="store_true", **common)
        else:
            group.add_argument(cli_field.flag, type=_ARG_TYPES[cli_field.kind], metavar=cli_field.path[-1].upper(),
                               required=cli_field.path[-1] in required, **common)


def config_values(args) -> dict[tuple[str, ...], object]:
    """``{field path: value}`` of the PruningConfig flags that were given."""
    return {tuple(dest[len(_CONFIG_DEST):].split(".")): value for dest, value in vars(args).items()
            if dest.startswith(_CONFIG_DEST)}


def config_from_args(args, **overrides) -> PruningConfig:
    """The PruningConfig the flags describe (``overrides``: ``{field: value}`` set by the subcommand)."""
    values = config_values(args)
    values.update({(key,): value for key, value in overrides.items()})
    return PruningConfig.from_cli_values(values)


def eval_default(name: str):
    """The default of an EvaluationConfig field (one place for every subcommand's evaluation flags)."""
    f = next(f for f in dataclasses.fields(EvaluationConfig) if f.name == name)
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def add_measurements(group, prefix: str = "") -> None:
    """Flags shared by `eval` and `prune`: tasks, efficiency, energy (``prefix`` avoids clashes in `prune`)."""
    group.add_argument(f"--{prefix}tasks", dest="tasks", default=None,
                       help="comma-separated tasks: piqa, arc_easy, arc_challenge, hellaswag, boolq, winogrande, "
                            "lambada (Hub, via datasets) or NAME=FILE.jsonl (local; see pruning_hf.evaluation.tasks)")
    group.add_argument(f"--{prefix}task-limit", dest="task_limit", type=int, default=None,
                       help="first N examples of each task")
    group.add_argument("--efficiency", action="store_true",
                       help="also measure latency, tokens/s, peak memory, checkpoint size and FLOPs")
    group.add_argument("--repeats", type=int, default=eval_default("repeats"),
                       help="timed repeats per speed measurement (median)")
    add_energy(group)
    group.add_argument("--no-samples", action="store_true", help="skip the greedy generation samples")


def add_energy(group) -> None:
    """``--energy`` / ``--no-energy`` (on by default) and ``--country-iso``."""
    group.add_argument("--energy", action=argparse.BooleanOptionalAction, default=eval_default("energy"),
                       help="measure energy and CO2e with codecarbon's offline tracker: the pruning run, and the "
                            "evaluation's workloads (on by default; the report says whether RAPL / NVML were read "
                            "or codecarbon estimated)")
    group.add_argument("--country-iso", default=eval_default("country_iso_code"), metavar="ISO3",
                       help="ISO alpha-3 country of the electricity grid for CO2e, e.g. FRA (default: codecarbon's "
                            "configuration, else the world average)")


def measurement_settings(args, **given) -> EvaluationConfig:
    """EvaluationConfig from the :func:`add_measurements` flags plus ``given`` fields."""
    return EvaluationConfig.coerce({
        **given, "tasks": split(args.tasks) or [], "task_limit": args.task_limit, "efficiency": args.efficiency,
        "repeats": args.repeats, "energy": args.energy, "country_iso_code": args.country_iso,
        "samples": not args.no_samples, "progress": not args.no_progress})


def check_report_path(path: str, flag: str) -> None:
    """A file path the command can write (its folder exists or can be made); CLIError otherwise."""
    target = Path(path)
    if target.is_dir():
        raise CLIError(f"{flag} {path!r} is a folder; give a file path")
    parent = target.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise CLIError(f"{flag} {path!r}: cannot write in {str(parent)!r}")

