"""The training pipeline, one package per stage a run passes through, each importing only those before it.

config*, presets typed frozen configs, their field declarations and files, the named presets (nothing else of ours)
cluster/         where a run executes: the cluster from TF_CONFIG or Slurm, strategies, the chief rule
data/            Fashion-MNIST from its sources, validated and split; the tf.data input pipeline
model/           the CNN family, its batch norm and initialisers
runs/            a run's directory: workdir files, the lock, the final model, the report
serving/         the TF Serving export, predictions from it, TFLite
training/        the driver, the steps and epoch loop, checkpointed state, optimiser, precision, preemption
"""
