"""Command-line entry points; the only place flags are defined."""

import os
import sys


def _verbosity(argv: list[str]) -> int:
    """The --verbosity (or -v) value in `argv`, read before absl parses flags; 0 when absent."""
    value = "0"
    for i, arg in enumerate(argv):
        for name in ("--verbosity", "-v"):
            if arg == name and i + 1 < len(argv):
                value = argv[i + 1]
            elif arg.startswith(f"{name}="):
                value = arg.split("=", 1)[1]
    try:
        return int(value)
    except ValueError:
        return 0


# TensorFlow's C++ INFO and WARNING logs are hidden unless --verbosity >= 1
# asks for them; errors show. Its C++ warnings are internal notices (device
# probes, tf.distribute's per-replica datasets, cancelled prefetches at an
# epoch's end), not about the run; what concerns the run we log ourselves.
# This must be set before TensorFlow loads; a value the user set is kept.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if _verbosity(sys.argv[1:]) >= 1 else "2")
