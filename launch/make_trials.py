#!/usr/bin/env python
"""Hold out speakers of a packed split as a validation set with a balanced trial list.

    python launch/make_trials.py --data shards/train.manifest.json --holdout-speakers 100 \
        --output shards/val --seed 0

Writes `val.manifest.json` + `val-000000.tar ...` (the held-out speakers), `val.trials.txt`
(every target pair, or --target-pairs N of them, and as many non-target pairs) and
`val.rest.manifest.json` + `val.rest-000000.tar ...` (the other speakers, labels 0..K-1, for
`data.train`). How: see mrl_dist/data/holdout.py.
"""

from mrl_dist.data.cli import make_trials_main

if __name__ == "__main__":
    raise SystemExit(make_trials_main())
