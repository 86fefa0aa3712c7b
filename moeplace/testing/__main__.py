"""``python -m moeplace.testing OUTDIR [names...]``: writes factory models for examples and benchmarks."""

import sys

from moeplace.testing.writer import main

sys.exit(main())
