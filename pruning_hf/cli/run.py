"""``pruning-hf run``: run a recipe YAML end to end (prune, measure, save with card, check, push)."""

from __future__ import annotations

from ..evaluation.report import is_metric
from ..workflows.recipes import Recipe

__all__ = ["add", "run"]


def add(sub) -> None:
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
    parser.set_defaults(func=run)


def run(args) -> int:
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
