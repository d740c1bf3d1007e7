"""Write a synthetic multi-speaker corpus in VoxCeleb layout plus a trial list (see --help).

python launch/make_demo_data.py --output data/demo
"""

from mrl_dist.demo.cli import make_demo_data_main

if __name__ == "__main__":
    raise SystemExit(make_demo_data_main())
