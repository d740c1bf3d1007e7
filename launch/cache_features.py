"""Cache a frozen trunk's pooled features once, so head training skips audio and trunk.

    python launch/cache_features.py --config configs/cpu-demo.yaml --output features/demo --crops-per-utterance 4
    accelerate launch --config_file configs/accelerate/multi-gpu.yaml launch/cache_features.py \
        --config configs/a100.yaml --output features/b2-vox2 --crops-per-utterance 4
    python launch/train.py --config configs/cpu-demo.yaml --set data.features=features/demo
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's mrl_dist, installed or not

from mrl_dist.train.cli import cache_features_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(cache_features_main())
