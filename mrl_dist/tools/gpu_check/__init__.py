"""One command that checks the GPU paths of the trainer on one CUDA device, in about 8 minutes.

    python launch/gpu_check.py --output gpu-check            # on a GPU machine
    python launch/gpu_check.py --device cpu --quick          # CPU self-test (tiny sizes, ~1 min)

Sections (each runs on its own: one that fails is recorded with its error, and the tail of its
output for subprocesses, and the others still run; the exit code is 1 if any failed):

  bench      the model step alone (synthetic waves already on the device; mrl_dist/tools/bench.py,
             the code behind launch/bench_train.py) for b2 frozen MRL, b2 unfrozen MRL, b2
             classifier and b0+b2 -> b2 distillation, at each shipped GPU config's batch size, in bf16.
  train-run  a real `accelerate launch` of launch/train.py on one GPU (NCCL, through
             configs/accelerate/multi-gpu.yaml with --num_processes 1) on generated demo shards:
             a short classifier run makes a backbone, then an MRL run with unfreeze_after_steps is
             stopped by SIGTERM and continued with --resume latest to its end.
  loader     end-to-end crops/s from the shards into the device memory with N loader workers.
  deepspeed  ~30 ZeRO-2 steps (configs/accelerate/deepspeed-zero2.yaml) when deepspeed imports;
             --install-deepspeed tries `pip install deepspeed` first. CPU: skipped (GPU only).

A global deadline (--time-budget-s, default 480) is checked before each section and each bench
case; what no longer fits is recorded "skipped: time budget" instead of overrunning. Results go
to DIR/gpu-check.json and DIR/gpu-check.md (the Markdown is meant for docs/benchmarks.md's GPU
section; it names the machine, the date and the exact command). Progress lines go to stderr.

What the figures mean:

  crops/s        crops per second through the training step (best of the timed blocks; the median
                 is beside it). bench: the model step alone; loader: decoded crops arriving in
                 device memory; train-run: the trainer's own crops_per_s (loader + step + logging).
  peak alloc     torch.cuda.max_memory_allocated over the timed steps (CUDA only).
  GFLOP/crop     FLOPs of one training step per crop (forward + backward of the TrainModule; for
                 distillation the teachers' forward too), counted by torch's FlopCounterMode
                 with its grouped-convolution weight-gradient formula corrected (see
                 `conv_backward_flop`). Matmuls and convolutions only, as is usual for MFU.
  TFLOP/s, MFU   GFLOP/crop x crops/s, and that divided by the device's dense bf16 peak
                 (`BF16_DENSE_PEAKS`, or --peak-tflops). Unknown peak (CPU, an unlisted card):
                 MFU is null in the JSON and "n/a" in the table.
"""

# The package's layout: plan (arguments, Plan, bench sizes from the configs), flops (FLOPs, MFU,
# peaks, machine facts), check (the shared Check state, SectionError), bench, trainlog (train.log
# parsing), launching (trainer subprocesses, SIGTERM), train_run, deepspeed_run, loader, report
# (JSON + Markdown) and runner (the section table, run_all, main). The command line needs only
# `main`; everything else is imported from its module.

from .runner import main

__all__ = ["main"]
