"""``pruning-hf iterative``: raise the sparsity in steps, keep the last model within a perplexity budget."""

from __future__ import annotations

from ..hf.loading import preflight
from ..workflows.iterative import iterative_prune
from .common import CLIError, add_energy, add_pruning_command, config_from_args, config_values, hf_kwargs, split

__all__ = ["add", "run"]


def add(sub) -> None:
    parser = sub.add_parser(
        "iterative", help="raise sparsity in steps, keep the last model within a perplexity budget",
        description="Prune MODEL in rising sparsity steps (up to --sparsity, or --steps), measure perplexity on a "
                    "validation slice after each, stop at the first step over --max-ppl-increase, and save the "
                    "last model that met it to --output.")
    add_pruning_command(parser, "folder for the kept checkpoint")
    it = parser.add_argument_group("steps and validation budget")
    it.add_argument("--step", type=float, default=0.1,
                    help="sparsity increment (default 0.1): step, 2 step, ... up to --sparsity")
    it.add_argument("--steps", default=None, help="explicit comma-separated sparsities, e.g. 0.3,0.4,0.5,0.6")
    it.add_argument("--max-ppl-increase", type=float, default=0.10,
                    help="budget: relative perplexity increase over dense (default 0.10 = +10%%)")
    it.add_argument("--validation", default="embedded@test", help="validation text source (default embedded@test)")
    it.add_argument("--validation-seq-len", type=int, default=512)
    it.add_argument("--validation-windows", type=int, default=16)
    add_energy(parser.add_argument_group("energy of the search"))
    parser.set_defaults(func=run)


def run(args) -> int:
    try:
        steps = [float(part) for part in split(args.steps)] if args.steps else None
    except ValueError:
        raise CLIError(f"--steps must be comma-separated numbers such as 0.3,0.4,0.5, got {args.steps!r}") from None
    given_sparsity = ("sparsity",) in config_values(args)
    config = config_from_args(args, **({"sparsity": steps[-1]} if steps and not given_sparsity else {}))
    ready = preflight(args.model, hf_kwargs=hf_kwargs(args), pruning=config, texts=(args.validation,),
                      output=args.output, iterative=True)
    model = ready.load_model()
    result = iterative_prune(model, config, args.validation, tokenizer=ready.tokenizer, steps=steps, step=args.step,
                             max_increase=args.max_ppl_increase, windows=ready.windows,
                             validation_seq_len=args.validation_seq_len, validation_windows=args.validation_windows,
                             progress=not args.no_progress, energy=args.energy, country_iso_code=args.country_iso)
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
