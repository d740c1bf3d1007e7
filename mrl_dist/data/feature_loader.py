"""Training batches from the pooled-feature cache (data/features.py): the `TrainLoader`
interface over cached trunk features instead of audio, so the head trains without the trunk."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from mrl_dist.data.features import FeatureCache, FeatureCacheError, read_feature_file


class _RowQueue:
    """Rows of some feature files, endless: chunks of two files at a time, shuffled, in an order
    drawn anew on each pass; `take(n)` gives the next n rows as {"pooled", "label", "start", "key"}."""

    def __init__(self, files: list[Path], rng: np.random.Generator):
        self.files, self.rng = files, rng
        self.chunks = self._chunks()
        self.pending = next(self.chunks)

    def _chunks(self) -> Iterator[dict]:
        while True:
            order = self.rng.permutation(len(self.files))
            for first in range(0, len(order), 2):
                parts = [read_feature_file(self.files[i]) for i in order[first : first + 2]]
                keys = [key for p in parts for key in p["keys"]]
                mix = torch.from_numpy(self.rng.permutation(len(keys)))
                yield {
                    "pooled": torch.cat([p["pooled"] for p in parts]).float()[mix],
                    "label": torch.cat([p["labels"] for p in parts])[mix],
                    "start": torch.cat([p["starts"] for p in parts])[mix],
                    "key": [keys[i] for i in mix.tolist()],
                }

    def take(self, count: int) -> dict:
        pending = self.pending
        while len(pending["key"]) < count:
            more = next(self.chunks)
            pending = {
                name: (pending[name] + more[name]) if name == "key" else torch.cat([pending[name], more[name]])
                for name in pending
            }
        self.pending = {name: value[count:] for name, value in pending.items()}
        return {name: value[:count] for name, value in pending.items()}


class FeatureLoader:
    """Training batches of cached pooled features, with the `TrainLoader` interface the trainer
    uses (`for batch in loader` is one epoch of `steps_per_epoch` batches; `set_epoch`,
    `skipped`, `num_classes`).

    Rank r reads the files r, r + R, ... (every file when there are fewer files than ranks; in
    a cache of several corpora, of each corpus); each epoch visits them in an order seeded by
    (seed, epoch, rank) and shuffles rows within a buffer of two files. `corpus_weights` (a mix's
    {name: weight}) draws each batch's crops from the corpora in proportion to the weights;
    without it, rows are drawn regardless of corpus. Batches: {"pooled": [B, P] float32,
    "label": [B] int64, "key": B str, "skipped": 0}.
    """

    def __init__(
        self,
        cache: FeatureCache,
        *,
        batch_size: int,
        steps_per_epoch: int,
        seed: int,
        rank: int,
        world_size: int,
        epoch: int = 0,
        crops_per_speaker: int = 1,
        corpus_weights: dict[str, float] | None = None,
    ):
        def mine(files: list[Path]) -> list[Path]:
            return files[rank::world_size] if len(files) >= world_size else files

        if corpus_weights is None:
            self.groups = [mine(cache.files)]
            self.weights = [1.0]
        else:
            corpora = cache.corpora
            if sorted(corpora) != sorted(corpus_weights):
                raise FeatureCacheError(
                    f"data.features: {cache.root} holds the corpora {sorted(corpora)}, but data.train mixes "
                    f"{sorted(corpus_weights)}; rebuild the cache for this mix"
                )
            self.groups = [mine(corpora[name]) for name in corpus_weights]
            self.weights = list(corpus_weights.values())
        self.batch_size, self.steps_per_epoch = batch_size, steps_per_epoch
        self.seed, self.rank, self.epoch = seed, rank, epoch
        self.num_classes = cache.num_speakers
        self.skipped = 0  # corrupt samples were skipped when the cache was built
        if crops_per_speaker > 1 and batch_size % crops_per_speaker:
            raise ValueError(
                f"data.crops_per_speaker {crops_per_speaker} does not divide training.batch_size {batch_size}"
            )
        self.crops_per_speaker = crops_per_speaker
        # Speaker-balanced batches: every row of this rank's files, and each speaker's row indices.
        self._table: dict | None = None
        self._rows_of: dict[int, np.ndarray] = {}
        self._speaker_corpus: dict[int, int] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps_per_epoch

    def _load_table(self) -> dict:
        """This rank's rows, read once and held in memory (features x 2 bytes x P per crop),
        with each speaker's rows and the weight of its corpus."""
        if self._table is None:
            parts, corpus_of_row = [], []
            for index, group in enumerate(self.groups):
                for path in group:
                    parts.append(read_feature_file(path))
                    corpus_of_row += [index] * len(parts[-1]["keys"])
            self._table = {
                "pooled": torch.cat([p["pooled"] for p in parts]),
                "label": torch.cat([p["labels"] for p in parts]),
                "start": torch.cat([p["starts"] for p in parts]),
                "key": [key for p in parts for key in p["keys"]],
            }
            labels = self._table["label"].numpy()
            order = np.argsort(labels, kind="stable")
            speakers, first = np.unique(labels[order], return_index=True)
            self._rows_of = dict(zip(speakers.tolist(), np.split(order, first[1:])))
            corpus = np.asarray(corpus_of_row)
            self._speaker_corpus = {s: int(corpus[rows[0]]) for s, rows in self._rows_of.items()}
        return self._table

    def _speaker_batches(self, rng: np.random.Generator) -> Iterator[dict]:
        """Endless batches of `batch_size / crops_per_speaker` speakers x `crops_per_speaker` crops
        (crops of a speaker's other utterances and sessions whenever it has them); in a mix, a
        speaker is drawn with the weight of its corpus shared among that corpus's speakers."""
        table = self._load_table()
        speakers = np.array(sorted(self._rows_of))
        per_batch = self.batch_size // self.crops_per_speaker
        if per_batch > len(speakers):
            raise ValueError(
                f"a batch of {per_batch} speakers x {self.crops_per_speaker} crops needs {per_batch} "
                f"speakers; this rank's features hold {len(speakers)}: lower training.batch_size or "
                "raise data.crops_per_speaker"
            )
        probabilities = None
        if len(self.groups) > 1:
            corpus = np.array([self._speaker_corpus[s] for s in speakers.tolist()])
            speakers_of = np.bincount(corpus, minlength=len(self.groups))
            probabilities = np.asarray(self.weights)[corpus] / speakers_of[corpus]
            probabilities /= probabilities.sum()
        while True:
            chosen = rng.choice(speakers, size=per_batch, replace=False, p=probabilities)
            rows = np.concatenate(
                [
                    rng.choice(
                        self._rows_of[s],
                        size=self.crops_per_speaker,
                        replace=len(self._rows_of[s]) < self.crops_per_speaker,
                    )
                    for s in chosen.tolist()
                ]
            )
            index = torch.from_numpy(rows)
            yield {
                "pooled": table["pooled"][index].float(),
                "label": table["label"][index],
                "start": table["start"][index],
                "key": [table["key"][i] for i in rows.tolist()],
                "skipped": 0,
            }

    def __iter__(self) -> Iterator[dict]:
        """One epoch: {"pooled": [B, P] float32, "label": [B] int64, "start": [B] int64 (of the crop
        in its utterance), "key": B str, "skipped": 0}."""
        rng = np.random.default_rng([self.seed, self.epoch, self.rank])
        self.epoch += 1
        if self.crops_per_speaker > 1:
            batches = self._speaker_batches(rng)
            for _ in range(self.steps_per_epoch):
                yield next(batches)
            return
        queues = [_RowQueue(group, rng) for group in self.groups]
        for _ in range(self.steps_per_epoch):
            if len(queues) == 1:
                yield {**queues[0].take(self.batch_size), "skipped": 0}
                continue
            counts = rng.multinomial(self.batch_size, np.asarray(self.weights) / sum(self.weights))
            taken = [queue.take(int(n)) for queue, n in zip(queues, counts)]
            mix = torch.from_numpy(rng.permutation(self.batch_size))
            keys = [key for part in taken for key in part["key"]]
            yield {
                **{name: torch.cat([part[name] for part in taken])[mix] for name in ("pooled", "label", "start")},
                "key": [keys[i] for i in mix.tolist()],
                "skipped": 0,
            }
