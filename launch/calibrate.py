#!/usr/bin/env python
"""Per-dim calibration (score -> LLR) and FAR thresholds, stored in the checkpoint; see mrl_dist/eval/calibrate_cli.py.

python launch/calibrate.py --checkpoint RUN/best.pt --data shards/cal.manifest.json [--trials T] --output RUN/calibrated.pt
"""

from mrl_dist.eval.calibrate_cli import calibrate_main

if __name__ == "__main__":
    raise SystemExit(calibrate_main())
