"""The recipe: sections, YAML load, `--set` overrides and the checks that run before anything loads."""
