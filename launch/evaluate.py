#!/usr/bin/env python
"""EER / minDCF per MRL dim of a checkpoint on a trial list, plus a DET plot; see mrl_dist/eval/cli.py.

    python launch/evaluate.py --checkpoint RUN/best.pt --data shards/val.manifest.json [--json]
"""

import sys
from pathlib import Path

if __package__ is None and str(Path(__file__).resolve().parents[1]) not in sys.path:
    # `python launch/evaluate.py` from a checkout that was not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mrl_dist.eval.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
