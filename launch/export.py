#!/usr/bin/env python
"""A checkpoint as one self-contained ONNX or TorchScript file (front-end inside); see mrl_dist/export/cli.py.

python launch/export.py --checkpoint RUN/best.pt --dim 128 --format onnx --output model-128.onnx
python launch/export.py --checkpoint RUN/best.pt --dim 64 --format torchscript --output model-64.ts.pt
python launch/export.py --checkpoint b2-vox2-ft_lm.pt --format onnx --output b2.onnx  # native 192-D
"""

from mrl_dist.export.cli import export_main

if __name__ == "__main__":
    raise SystemExit(export_main())
