"""Embeddings of audio files (any format make_shards.py reads): one L2-normalised vector per file.

python launch/embed.py --checkpoint runs/demo/mrl/best.pt --dim 64 --input audio/ one.m4a --output emb.npy
python launch/embed.py --checkpoint runs/demo/mrl/best.pt --input long.wav --output long.npy --window 3 --hop 1.5
"""

from mrl_dist.eval.cli import embed_main

if __name__ == "__main__":
    raise SystemExit(embed_main())
