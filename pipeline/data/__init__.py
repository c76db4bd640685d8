"""The data: Fashion-MNIST from its sources, validated, in one canonical order, split; the tf.data pipeline.

`sources` yields NumPy arrays (`tfds_source` is its last resort, tensorflow-datasets);
`input_pipeline` turns them into per-replica datasets. Imports `pipeline.config` and `pipeline.cluster`.
"""
