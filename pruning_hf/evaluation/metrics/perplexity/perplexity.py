"""`evaluate` metric: perplexity of an in-memory causal LM over non-overlapping token windows.

The Hub's ``perplexity`` metric loads a model by id; this one takes the model object, so a pruned
model is measured as it is in memory. Load it by path (no Hub access)::

    metric = pruning_hf.evaluation.load_metric("perplexity")   # evaluate.load(<this file>)
    metric.compute(texts=[...], model=model, tokenizer=tokenizer, seq_len=512, max_windows=40)

The texts are joined with blank lines, tokenized without special tokens, cut into windows of
``seq_len`` tokens (a last shorter window only with ``keep_partial=True``); perplexity is
``exp(total NLL / predicted tokens)``. Computed by :func:`pruning_hf.evaluation.perplexity.perplexity`.
"""

import datasets
import evaluate

from pruning_hf.data.text import tokenize_texts
from pruning_hf.evaluation.perplexity import perplexity
from pruning_hf.evaluation.modules import metric_info

_INPUTS = """
Args:
    texts (list of str): documents to score.
    model: a causal LM (``transformers`` model object).
    tokenizer: its tokenizer.
    seq_len (int): tokens per window. max_windows (int, optional): windows to use.
    batch_size (int): windows per forward pass. keep_partial (bool): score a last shorter window.
Returns:
    perplexity, nll (mean per predicted token), tokens (predicted), windows, seq_len.
"""


class Perplexity(evaluate.Metric):
    def _info(self):
        return metric_info(__doc__, _INPUTS, {"texts": datasets.Value("string")})

    def _compute(self, texts, model, tokenizer, seq_len=512, max_windows=None, batch_size=4, keep_partial=False,
                 progress=False):
        tokens = tokenize_texts(texts, tokenizer)
        return perplexity(model, tokens, seq_len, max_windows, batch_size=batch_size, keep_partial=keep_partial,
                          progress=progress)
