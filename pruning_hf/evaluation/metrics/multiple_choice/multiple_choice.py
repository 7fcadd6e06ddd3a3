"""`evaluate` metric: zero-shot multiple-choice accuracy of an in-memory causal LM.

Each example scores ``contexts[j] + " " + choices[j]`` for every choice ``j`` by the summed
log-probability of the choice's tokens; ``acc`` counts the argmax, ``acc_norm`` the argmax after
dividing each sum by the choice's length in characters (as lm-evaluation-harness). Load it by path::

    metric = pruning_hf.evaluation.load_metric("multiple_choice")
    metric.compute(contexts=[["Q?", "Q?"]], choices=[["yes", "no"]], labels=[0], model=m, tokenizer=t)

Computed by :func:`pruning_hf.evaluation.loglikelihood.multiple_choice_accuracy`.
"""

import datasets
import evaluate

from pruning_hf.evaluation.loglikelihood import multiple_choice_accuracy
from pruning_hf.evaluation.modules import metric_info

_INPUTS = """
Args:
    contexts (list of list of str): per example, one context per choice (repeat it for usual tasks).
    choices (list of list of str): per example, the candidate continuations.
    labels (list of int): index of the right choice.
    model, tokenizer: the causal LM and its tokenizer. batch_size (int): sequences per forward pass.
Returns:
    acc, acc_norm, examples.
"""


class MultipleChoice(evaluate.Metric):
    def _info(self):
        return metric_info(__doc__, _INPUTS, {"contexts": datasets.Sequence(datasets.Value("string")),
                                              "choices": datasets.Sequence(datasets.Value("string")),
                                              "labels": datasets.Value("int64")})

    def _compute(self, contexts, choices, labels, model, tokenizer, batch_size=8, progress=False):
        return multiple_choice_accuracy(model, tokenizer, contexts, choices, labels, batch_size, progress)
