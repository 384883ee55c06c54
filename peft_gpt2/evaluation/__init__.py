"""Scoring models and adapters on held-out data: metrics, intervals and paired tests, side-by-side compare."""
