"""Compare results to files: Markdown/JSON/CSV tables and charts."""
