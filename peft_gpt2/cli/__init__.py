"""The `peft-gpt2` command: its subcommands, flags, chat loop, pipelines and sweeps."""
