"""Training: the driver (`driver.train_and_evaluate`), the steps, the epoch loop, the checkpointed state,
the optimiser, the precision and preemption.

The last stage: it may import every other package of `pipeline`.
"""
