#!/usr/bin/env python
"""EER / minDCF per MRL dim of a checkpoint on a trial list, plus a DET plot; see mrl_dist/eval/cli.py.

python launch/evaluate.py --checkpoint RUN/best.pt --data shards/val.manifest.json [--json]
"""

from mrl_dist.eval.cli import evaluate_main

if __name__ == "__main__":
    raise SystemExit(evaluate_main())
