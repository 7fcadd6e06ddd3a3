"""Compositions of the layers below: compare models, iterative pruning, sweeps, recipes."""
