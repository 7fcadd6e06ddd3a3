"""Names of the files a pruned checkpoint folder holds besides the weights, config and tokenizer."""

CARD_FILE = "README.md"
PRUNING_REPORT_FILE = "pruning_report.json"   # engine.report.PruningReport
EVALUATION_FILE = "evaluation_report.json"    # evaluation.report.EvaluationReport (dense vs pruned)
LEGACY_EVALUATION_FILE = "evaluation.json"    # flat metrics written by pruning_hf 0.1 recipes and sweeps (read only)
RECIPE_FILE = "recipe.yaml"                   # the recipe that made the checkpoint
SWEEP_FILE = "sweep.json"                     # the sweep a --save-best checkpoint came from
SWEEP_PLOTS = ("sweep_perplexity.png", "sweep_pareto.png")
#: files that travel with a checkpoint: reloading and re-saving it unchanged keeps them
ATTACHMENTS = (RECIPE_FILE, LEGACY_EVALUATION_FILE, SWEEP_FILE, *SWEEP_PLOTS)
