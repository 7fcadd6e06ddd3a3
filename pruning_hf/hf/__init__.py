"""The Hugging Face side: loading (one preflight for every entry point), ``prune`` / ``AutoPrunedModel``,
the ``pruning_hf`` transformers quantizer, checkpoint files, model cards, Hub upload, 2:4 kernels."""
