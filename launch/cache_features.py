"""Cache a frozen trunk's pooled features once, so head training skips audio and trunk.

    python launch/cache_features.py --config configs/cpu-demo.yaml --output features/demo --crops-per-utterance 4
    accelerate launch --config_file configs/accelerate/multi-gpu.yaml launch/cache_features.py \
        --config configs/a100.yaml --output features/b2-vox2 --crops-per-utterance 4
    python launch/train.py --config configs/cpu-demo.yaml --set data.features=features/demo
"""

from mrl_dist.train.cli import cache_features_main

if __name__ == "__main__":
    raise SystemExit(cache_features_main())
