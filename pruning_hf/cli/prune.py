"""``pruning-hf prune``: prune a model (optionally measuring dense vs pruned) and save the checkpoint."""

from __future__ import annotations

from pathlib import Path

from ..hf.files import EVALUATION_FILE
from ..hf.loading import preflight
from ..hf.pruning import prune, prune_and_compare
from ..hf.cards import energy_line
from .common import add_measurements, add_pruning_command, config_from_args, eval_default, \
    hf_kwargs, measurement_settings

__all__ = ["add", "run"]


def add(sub) -> None:
    parser = sub.add_parser("prune", help="prune a model and save the checkpoint",
                            description="Prune MODEL (Hub id, local folder, or embedded:NAME) and save it to --output.")
    add_pruning_command(parser, "folder for the pruned checkpoint")
    ev = parser.add_argument_group("dense vs pruned evaluation (--eval-text, --eval-tasks or --efficiency turns it on; "
                                   "report saved in --output) and energy (of the pruning run, always, unless --no-energy)")
    ev.add_argument("--eval-text", default=None,
                    help=f"text source for dense vs pruned perplexity (default {eval_default('text')})")
    ev.add_argument("--eval-seq-len", type=int, default=eval_default("seq_len"))
    ev.add_argument("--eval-windows", type=int, default=eval_default("max_windows"))
    add_measurements(ev, prefix="eval-")
    parser.add_argument("--compress", action="store_true",
                        help="store pruned weights compressed (values + bitmask / N:M indices, ~0.56x at 50%%); "
                             "loading it needs `import pruning_hf`")
    parser.add_argument("--activation-storage", default="cpu",
                        help="where calibration activations wait between layers: cpu, a device, or disk")
    parser.add_argument("--resume", default=None, metavar="DIR",
                        help="checkpoint every finished decoder layer in DIR; rerun the same command to continue "
                             "an interrupted run (magnitude, wanda, sparsegpt; DIR is emptied at the end)")
    parser.set_defaults(func=run)


def run(args) -> int:
    config = config_from_args(args)
    evaluate = any((args.eval_text, args.tasks, args.efficiency))
    settings = measurement_settings(args, text=args.eval_text or eval_default("text"), seq_len=args.eval_seq_len,
                                    max_windows=args.eval_windows) if evaluate else None
    ready = preflight(args.model, hf_kwargs=hf_kwargs(args), pruning=config, evaluation=settings, output=args.output,
                      activation_storage=args.activation_storage, resume_dir=args.resume)
    model = ready.load_model()
    progress = not args.no_progress
    prune_options = {"activation_storage": args.activation_storage, "windows": ready.windows, "resume_dir": args.resume,
                     "energy": args.energy, "country_iso_code": args.country_iso}
    if ready.evaluation is not None:
        evaluation = prune_and_compare(model, ready.tokenizer, config, ready.evaluation, progress=progress,
                                       prune_options=prune_options)
        report = model.pruning_report
    else:
        evaluation, report = None, prune(model, config, ready.tokenizer, progress=progress, **prune_options)
    model.save_pretrained(args.output, compress=args.compress)
    print(f"pruned {args.model} with {config.describe()}: {report.summary()} in {report.total_seconds:.1f} s; "
          f"saved to {args.output}")
    if model.pruning_energy:
        print(f"energy of the pruning run: {energy_line(model.pruning_energy)}")
    if evaluation is not None:
        print(f"\n{evaluation.to_markdown()}\n\n(full report: {Path(args.output) / EVALUATION_FILE})")
    return 0
