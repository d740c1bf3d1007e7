#!/usr/bin/env python
"""Pack a speaker corpus into tar shards of 16 kHz mono FLAC for streaming training (VoxCeleb
layout by default; CN-Celeb, LibriSpeech, plain folders, Kaldi data directories, tables: --layout,
docs/data.md).

    python launch/make_shards.py --input /data/voxceleb2/dev/aac --output shards --split train
    python launch/make_shards.py --input /data/voxceleb1/test/wav --output shards --split val \
        --trials /data/voxceleb1/veri_test2.txt

Writes `NAME-000000.tar ...`, `NAME.manifest.json` and, with --trials, `NAME.trials.txt`.
`--codec pcm` stores 16-bit PCM `.wav` members instead of FLAC: crops without decoding, for more
disk (docs/data.md, "Codecs: FLAC or PCM").
Parallel, resumable, deterministic whatever --workers is; bad files are skipped and listed in
the manifest with their reason. How: see mrl_dist/data/packing.py.
"""

from mrl_dist.data.cli import make_shards_main

if __name__ == "__main__":
    raise SystemExit(make_shards_main())
