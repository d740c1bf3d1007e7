"""mrl-dist: multi-resolution (Matryoshka) speaker embeddings on ReDimNet, trained at scale."""

__version__ = "0.1.0"
