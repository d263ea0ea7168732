"""Evolutionary search over mergekit merge recipes, scored with lm-evaluation-harness."""

__version__ = "0.1.0"
