"""Measuring pruned models: per-layer reports and plots."""

from keras_prune.analysis.report import LayerSummary, PruningReport, summarize

__all__ = ["LayerSummary", "PruningReport", "summarize"]
