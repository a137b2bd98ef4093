"""Tasks: what a model is trained for (loss, batches, evaluation)."""
