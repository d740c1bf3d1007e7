#!/usr/bin/env python
"""Training-step throughput of one preset and mode, or the memory estimate of the shipped configs.

    python launch/bench_train.py --preset tiny --mode classifier --batch-size 32 --crop-seconds 2 \
        --steps 20 --warmup 3 --threads 2 --device cpu --precision no
    python launch/bench_train.py --preset b2 --mode mrl-frozen --batch-size 256 --device cuda --precision bf16
    python launch/bench_train.py --estimate-memory configs/*.yaml
    python launch/bench_train.py --preset tiny --mode classifier --compile    # training.compile
    python launch/bench_train.py --preset b2 --mode mrl-frozen --from-features --num-classes 117000 --batch-size 256

Throughput: synthetic waves already in memory, so this is the model step alone (forward,
Matryoshka AAM over the MRL dims, backward, clipping, AdamW), not the loader; see
launch/bench_loader.py for that. Prints a Markdown row: crops/s (best and median of --repeats
timed blocks) and, on CUDA, the measured peak memory (torch.cuda.max_memory_allocated), the
figure that replaces the estimate. --compile runs the step compiled (training.compile) and prints
the first step's time, the compilation, apart; --from-features runs the head's step on pooled
features (data.features), where the class count (--num-classes, --sampled-classes) weighs most.
--estimate-memory prints the estimated peak memory of every GPU config given
(mrl_dist/tools/memory.py explains the method; with --num-classes at that many speakers); it
needs no GPU.
"""

from mrl_dist.tools.cli import bench_train_main

if __name__ == "__main__":
    raise SystemExit(bench_train_main())
