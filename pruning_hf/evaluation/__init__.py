"""Measuring pruned models: quality (perplexity), and more in the submodules."""

from .perplexity import perplexity, text_perplexity

__all__ = ["perplexity", "text_perplexity"]
