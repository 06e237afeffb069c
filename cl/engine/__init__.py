"""The stream engine: the per-experience loop, evaluation of every experience, checkpoints and run records."""
