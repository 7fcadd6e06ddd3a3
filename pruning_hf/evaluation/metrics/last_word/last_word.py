"""`evaluate` metric: last-word accuracy (LAMBADA) of an in-memory causal LM.

An example is right when greedy decoding after ``context`` reproduces every token of
``" " + target``; ``perplexity`` is ``exp(-mean log p(target))``. Load it by path::

    metric = pruning_hf.evaluation.load_metric("last_word")
    metric.compute(contexts=["The cat sat on the"], targets=["mat"], model=m, tokenizer=t)

Computed by :func:`pruning_hf.evaluation.loglikelihood.last_word_accuracy`.
"""

import datasets
import evaluate

from pruning_hf.evaluation.loglikelihood import last_word_accuracy
from pruning_hf.evaluation.modules import metric_info

_INPUTS = """
Args:
    contexts (list of str): text before the last word. targets (list of str): the last words.
    model, tokenizer: the causal LM and its tokenizer. batch_size (int): sequences per forward pass.
Returns:
    acc, perplexity, examples.
"""


class LastWord(evaluate.Metric):
    def _info(self):
        return metric_info(__doc__, _INPUTS, {"contexts": datasets.Value("string"), "targets": datasets.Value("string")})

    def _compute(self, contexts, targets, model, tokenizer, batch_size=8, progress=False):
        return last_word_accuracy(model, tokenizer, contexts, targets, batch_size, progress)
