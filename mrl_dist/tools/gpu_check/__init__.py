"""One command that checks the GPU paths of the trainer on one CUDA device within a time budget
(--time-budget-s, 480 s by default).

    python launch/gpu_check.py --output gpu-check            # on a GPU machine
    python launch/gpu_check.py --device cpu --quick          # CPU self-test (tiny sizes, ~40 s)

Sections, in order of value (a short budget keeps the first ones). Each runs on its own: one that
fails is recorded with its error, and the tail of its output for subprocesses, and the others
still run; the exit code is 1 if any failed:

  bench      the model step alone (synthetic waves already on the device; mrl_dist/tools/bench.py,
             the code behind launch/bench_train.py), in bf16, in order of value: b2 frozen MRL,
             unfrozen MRL and classifier at the batch most GPU configs train at, b0+b2 -> b2
             distillation at the distillation configs' batch; then the unfrozen MRL step compiled
             (training.compile; --compile-backend, in a process of its own killed at its time
             limit, with its first step (the compile) and its speed-up over eager); then the
             other configs' batch sizes. It holds back time for the train-run and the loader
             (Plan.reserve_s): cases that would eat into it are "skipped: time budget".
  train-run  a real `accelerate launch` of launch/train.py on one GPU (NCCL, through
             configs/accelerate/multi-gpu.yaml with --num_processes 1) on generated demo shards:
             a short classifier run makes a backbone, then an MRL run with unfreeze_after_steps is
             stopped by SIGTERM and continued with --resume latest to its end.
  loader     crops/s from the shards into the device memory per shard codec (--loader-codecs,
             make_shards --codec flac|pcm) and loader worker count (--loader-workers), also per
             core; then end to end: the loader with the most workers and the better codec
             feeding the b2 frozen-trunk MRL step (the GPU goal: >= 20,000 crops/s).
  deepspeed  ~30 ZeRO-2 steps (configs/accelerate/deepspeed-zero2.yaml) when deepspeed imports;
             --install-deepspeed tries `pip install deepspeed` first. CPU: skipped (GPU only).

A global deadline (--time-budget-s, default 480) is checked before each section and each bench
case; what no longer fits is recorded "skipped: time budget" instead of overrunning. Results go
to DIR/gpu-check.json and DIR/gpu-check.md (the Markdown is meant for docs/benchmarks.md's GPU
section; it names the machine, the date and the exact command). Progress lines go to stderr.

What the figures mean:

  crops/s        crops per second through the training step (best of the timed blocks; the median
                 is beside it). bench: the model step alone; loader: decoded crops arriving in
                 device memory (end to end: and through the step); train-run: the trainer's own
                 crops_per_s (loader + step + logging).
  first step     the first warm-up step's seconds: allocations and autotuning, and for a compiled
                 case the compile itself.
  peak alloc     torch.cuda.max_memory_allocated over the timed steps (CUDA only).
  GFLOP/crop     FLOPs of one training step per crop (forward + backward of the TrainModule; for
                 distillation the teachers' forward too), counted by torch's FlopCounterMode
                 with its grouped-convolution weight-gradient formula corrected (see
                 `conv_backward_flop`). Matmuls and convolutions only, as is usual for MFU.
  TFLOP/s, MFU   GFLOP/crop x crops/s, and that divided by the device's dense bf16 peak
                 (`BF16_DENSE_PEAKS`, or --peak-tflops). Unknown peak (CPU, an unlisted card):
                 MFU is null in the JSON and "n/a" in the table.
  GPU goals      on a CUDA device the Markdown weighs the b2 figures against the project's goals:
                 >= 20,000 crops/s end to end (frozen trunk), >= 25 % MFU unfrozen.
"""

# The package's layout: plan (arguments, Plan, bench sizes from the configs), flops (FLOPs, MFU,
# peaks, machine facts), check (the shared Check state, SectionError), bench (its compiled case
# runs launch/bench_train.py --compile), trainlog (train.log parsing), launching (trainer
# subprocesses, SIGTERM), train_run, deepspeed_run, loader, report
# (JSON + Markdown) and runner (the section table, run_all, main). The command line needs only
# `main`; everything else is imported from its module.

from .runner import main

__all__ = ["main"]
