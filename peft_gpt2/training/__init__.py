"""A recipe to a run folder: the trainer, checkpoints, progress, memory estimate, model card, hub push."""
