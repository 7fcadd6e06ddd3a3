"""``pruning-hf card``: (re)render the model card (README.md) of a pruned checkpoint folder."""

from __future__ import annotations

from pathlib import Path

from ..hf.cards import write_model_card
from .common import CLIError

__all__ = ["add", "run"]


def add(sub) -> None:
    parser = sub.add_parser("card", help="(re)render the model card (README.md) of a pruned checkpoint",
                            description="Re-render DIR/README.md from the checkpoint's config, reports and recipe.")
    parser.add_argument("folder", help="saved pruned checkpoint folder")
    parser.add_argument("--repo-id", default=None, help="Hub repo the card should name (USER/NAME)")
    parser.set_defaults(func=run)


def run(args) -> int:
    if not (Path(args.folder) / "config.json").is_file():
        raise FileNotFoundError(f"{args.folder!r} is not a saved checkpoint folder (no config.json)")
    path = write_model_card(args.folder, repo_id=args.repo_id, location=args.folder)
    if path is None:
        raise CLIError(f"{args.folder!r} holds no pruning_config in config.json: it is not a pruned checkpoint")
    print(f"wrote {path}")
    return 0
