#!/usr/bin/env python
"""Export size and CPU latency per dim: onnxruntime vs TorchScript vs the PyTorch eval model.

    python launch/bench_export.py --models b2-mrl redimnet2-b3 --seconds 4 --batch-size 1 --repeats 20 --threads 2

How it is measured: mrl_dist/export/bench.py. Prints a Markdown table (size in MB, max |ORT -
PyTorch|, best and median ms per call) and a machine line (date, CPU, versions, load, command).
"""

from mrl_dist.export.cli import bench_export_main

if __name__ == "__main__":
    raise SystemExit(bench_export_main())
