"""Train an MRL head, a classifier backbone or a distilled student.

    python launch/train.py --config configs/cpu-demo.yaml
    accelerate launch --config_file configs/accelerate/1gpu.yaml launch/train.py --config configs/a100.yaml
    accelerate launch --cpu --num_processes 2 launch/train.py --config configs/cpu-demo.yaml --resume latest
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's mrl_dist, installed or not

from mrl_dist.train.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
