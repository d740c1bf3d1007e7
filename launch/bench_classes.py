#!/usr/bin/env python
"""What 100k+ speaker classes cost in one training step: the class matrix, its AdamW state, the
logits [batch, classes] per MRL dim, the live peak of forward + backward, and the time per step;
every class against sampled classes (`loss.sampled_classes`).

    python launch/bench_classes.py --classes 117000 --sampled 16384 --batch-size 256 --threads 2

The step is the head's on pooled features (what `data.features` trains); what is measured and
how: mrl_dist/tools/bench_classes.py. The GPU configs' estimates at many classes:
`python launch/bench_train.py --estimate-memory configs/rtx3060-12gb.yaml --num-classes 117000`.
"""

from mrl_dist.tools.classes_cli import bench_classes_main

if __name__ == "__main__":
    raise SystemExit(bench_classes_main())
