"""The ``pruning-hf`` command: one module per subcommand (each has ``add(subparsers)`` and ``run(args)``).

Bad input gets one line on stderr naming the bad value and the fix, and exit code 2; nothing
expensive (model load, calibration) starts before the arguments are validated.
"""

from __future__ import annotations

import sys
import typing

from ..data.text import DataSourceError
from ..hf.hub import HubPushError
from ..hf.loading import ModelLoadError
from ..models.architectures import UnsupportedModelError
from ..utils.storage import CheckpointWriteError, OutputPathError
from . import card, eval, iterative, methods, prune, push, run, sweep
from .common import EXIT_BAD_INPUT, CLIError, Parser

__all__ = ["main", "build_parser"]

SUBCOMMANDS = (prune, iterative, eval, methods, sweep, run, card, push)
#: the user's input was wrong: exit 2
USER_ERRORS = (CLIError, ValueError, DataSourceError, ModelLoadError, OutputPathError, UnsupportedModelError,
               FileNotFoundError, ModuleNotFoundError, PermissionError)
#: not the user's input (network, Hub permissions, a full disk): exit 1
FAILURES = (HubPushError, CheckpointWriteError)


def build_parser() -> Parser:
    parser = Parser(prog="pruning-hf", description="The pruning-hf command line: prune Hugging Face causal language "
                                                   "models without retraining, and measure what you traded.")
    sub = parser.add_subparsers(dest="command", required=True)
    for subcommand in SUBCOMMANDS:
        subcommand.add(sub)
    return parser


def main(argv: typing.Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    if getattr(args, "no_progress", False):  # also transformers' "Loading weights" / "Writing shards" bars
        hf_logging.disable_progress_bar()
    try:
        return args.func(args)
    except USER_ERRORS as err:
        print(f"pruning-hf {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except FAILURES as err:
        print(f"pruning-hf {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"pruning-hf {args.command}: interrupted; no partial output was written", file=sys.stderr)
        return 130
    finally:
        if bars:
            hf_logging.enable_progress_bar()
