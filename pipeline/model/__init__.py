"""The model: the CNN family (`network`), its fused batch norm, initialisers and test-time views.

Imports `pipeline.config` and `pipeline.data`.
"""
