"""Corpus traces: record a model over a whole dataset, summarise it while streaming, query it."""
