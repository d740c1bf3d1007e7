"""The main job on built-in demo data, on CPU in a few minutes, ending with an EER table per dim.

python launch/demo.py                      # runs/demo/...
python launch/demo.py --output /tmp/demo --classifier-steps 300
"""

from mrl_dist.demo.cli import demo_main

if __name__ == "__main__":
    raise SystemExit(demo_main())
