#!/usr/bin/env python
"""Check the GPU paths on one CUDA device within --time-budget-s (480 s by default) (see mrl_dist/tools/gpu_check/).

python launch/gpu_check.py --output gpu-check        # on a GPU machine
python launch/gpu_check.py --device cpu --quick      # CPU self-test
"""

from mrl_dist.tools.cli import gpu_check_main

if __name__ == "__main__":
    raise SystemExit(gpu_check_main())
