"""Training: tasks (data), models, initializations, losses, optimizers, the training
loop, the Ray-task runner, the in-task spectrum monitor and the capacity checks.
No Ray here: the driver wraps :func:`runner.run_variant` in a Ray task."""
