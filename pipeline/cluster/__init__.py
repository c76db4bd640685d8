"""Where a run executes: the cluster (TF_CONFIG, Slurm), each process's GPUs, strategies and the chief rule.

`environment` reads the environment without TensorFlow (it runs before TensorFlow
initialises its devices); `strategies` builds the strategy and its collectives.
Imports `pipeline.config` only.
"""
