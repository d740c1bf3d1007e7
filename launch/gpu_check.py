#!/usr/bin/env python
"""Check the GPU paths on one CUDA device within 8 minutes (see mrl_dist/tools/gpu_check/).

    python launch/gpu_check.py --output gpu-check        # on a GPU machine
    python launch/gpu_check.py --device cpu --quick      # CPU self-test
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's mrl_dist, installed or not

from mrl_dist.tools.gpu_check import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
