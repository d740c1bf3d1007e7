#!/usr/bin/env python
"""int8 ONNX against fp32, per dim: EER on the same trials and CPU latency side by side.

    python launch/bench_int8.py --checkpoint RUN/best.pt --data shards/val.manifest.json \
        --int8 dynamic static --int8-calibration shards/dev.manifest.json --threads 2

How it is measured: mrl_dist/export/bench_int8.py. Prints a Markdown table (EER and minDCF of
both files, the change in points, the smallest cosine between their embeddings, median ms per
call, sizes), what stayed fp32 (stderr), and a machine line (date, CPU, versions, command).
"""

from mrl_dist.export.cli import bench_int8_main

if __name__ == "__main__":
    raise SystemExit(bench_int8_main())
