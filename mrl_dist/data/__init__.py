"""Data: packing VoxCeleb into tar shards, and streaming training/evaluation batches from them.

* packing (numpy, soundfile, PyAV; never torch): `layouts`, `corpus_lists` (list a corpus's
  samples per --layout), `corpus` (pass 1: decode the audio),
  `shard_writer` (pass 2: plan and write tars), `packing` (the job), `manifest`, `audio`,
  `codecs` (FLAC or PCM members: writing and reading both), `trials`, `cli` (`launch/make_shards.py`)
* loading (torch): `shard_reader`, `stages`, `augment`, `features`, `pipeline` (the loaders)

This front exports nothing: import each name from its module (`from mrl_dist.data.pipeline import
make_train_loader`), so that packing shards never imports torch (tests/test_imports.py).
"""
