"""The model: the CNN family and its initialisers (`network`), its fused batch norm (`batch_norm`) and the
test-time views it averages at inference (`views`).

Imports `pipeline.config` and `pipeline.data`.
"""
