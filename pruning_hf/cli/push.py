"""``pruning-hf push``: upload a pruned checkpoint folder (with its model card) to the Hugging Face Hub."""

from __future__ import annotations

from ..hf.hub import push_folder

__all__ = ["add", "run"]


DESCRIPTION = ("Create USER/NAME (if needed) and upload DIR with its model card. The token comes from --token, "
               "HF_TOKEN or `hf auth login`, and is never printed.")


def add(sub) -> None:
    parser = sub.add_parser("push", help="upload a pruned checkpoint folder to the Hugging Face Hub",
                            description=DESCRIPTION)
    parser.add_argument("folder", help="saved pruned checkpoint folder")
    parser.add_argument("repo_id", help="USER/NAME or ORG/NAME")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--token", default=None, help="Hub token (prefer HF_TOKEN: arguments show in process lists)")
    parser.add_argument("--commit-message", default=None)
    parser.set_defaults(func=run)


def run(args) -> int:
    url = push_folder(args.folder, args.repo_id, private=args.private or None, token=args.token,
                      commit_message=args.commit_message)
    print(f"pushed {args.folder} to {url}")
    return 0
