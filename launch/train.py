"""Train an MRL head, a classifier backbone or a distilled student.

python launch/train.py --config configs/cpu-demo.yaml
accelerate launch --config_file configs/accelerate/1gpu.yaml launch/train.py --config configs/a100.yaml
accelerate launch --multi_gpu --num_processes 2 launch/train.py --config configs/cpu-demo.yaml --resume latest
"""

from mrl_dist.train.cli import train_main

if __name__ == "__main__":
    raise SystemExit(train_main())
