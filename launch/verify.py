#!/usr/bin/env python
"""Same speaker or not: score per dim, calibrated LLR and decision per pair; see mrl_dist/eval/verify_cli.py.

python launch/verify.py --checkpoint calibrated.pt --dim 64 A.wav B.wav [--far 0.01] [--json]
python launch/verify.py --checkpoint calibrated.pt --pairs pairs.txt --audio-root audio/ --json
python launch/verify.py --checkpoint calibrated.pt --enrol a1.wav a2.wav --test b.wav
"""

from mrl_dist.eval.verify_cli import verify_main

if __name__ == "__main__":
    raise SystemExit(verify_main())
