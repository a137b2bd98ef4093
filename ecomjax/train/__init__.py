"""Training: loop, optimizer, mesh and shardings, checkpoints."""
