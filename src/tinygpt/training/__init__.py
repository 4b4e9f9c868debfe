"""Training: the loop (setup, steps, evaluation, checkpoints), a run in its directory (runs),
the optimizers and the schedule (optim), time limits (budget), metrics, and signals."""
