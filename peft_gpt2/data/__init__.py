"""Training and evaluation data: sources (files, URLs, hub sets), templates, and the rows each format makes."""
