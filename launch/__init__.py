"""Command-line entry points; the only place flags are defined."""

import os

# TensorFlow's C++ INFO/WARNING lines (CUDA probing on CPU-only hosts, oneDNN
# notices) drown the progress output; errors still show. Users can override.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
