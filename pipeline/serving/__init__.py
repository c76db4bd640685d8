"""Serving: the TensorFlow Serving export, predictions from an export, TFLite models, image decoding.

Imports the stages before it (`pipeline.config` to `pipeline.runs`), never `pipeline.training`.
"""
