"""Distillation from a family of frozen ReDimNet teachers into one Matryoshka student.

Each teacher supervises the student prefixes it lists (`distill.teachers[i].dims`): a small
teacher for the short prefixes, a large one for the full embedding. Teachers differ in
architecture and width, so nothing is merged weight-wise; the student learns from their
embeddings, through up to three terms per supervised prefix d of teacher t:

    embedding   1 - cos(A_td(student[:, :d]), teacher_t)        A_td: Linear(d -> E_t), learned
    similarity  MSE of the B x B cosine matrices of student[:, :d] and teacher_t (off-diagonal)
    aam         Matryoshka AAM-softmax on speaker labels (labelled shards only)

The adapter maps the *student* prefix into the teacher's space rather than the teacher into
the student's: with a learned map on the teacher side, adapter and student can both collapse
to one constant direction (any A = c u^T with u . t > 0 for all teachers t) and score a perfect
loss. A student-side adapter must reproduce the varying teacher embedding, which it can only
do if the prefix carries that teacher's information.

Teachers are kept in plain lists, never registered as submodules of anything that trains, so
they stay out of state_dicts, optimizers and DDP; their `train()` is pinned to eval mode.
"""

from __future__ import annotations

import os
import types
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from mrl_dist.config import DistillLossesConfig, TeacherConfig
from mrl_dist.data.frozen_outputs import read_outputs_file, write_outputs_file
from mrl_dist.dims import require, teacher_dims_problem, weight_problem
from mrl_dist.losses import MatryoshkaAAMLoss
from mrl_dist.models import CheckpointError, inference_form, load_pretrained
from mrl_dist.models.encoder import SpeakerEncoder
from mrl_dist.models.inference import stay_in_eval
from mrl_dist.models.loading import default_weights, names_a_file

UNLABELLED = -1  # label of a sample from an unlabelled shard


# ---------------------------------------------------------------------------- teachers


@dataclass
class Teacher:
    """A frozen, eval-mode teacher and what it supervises: student `dims`, loss `weight`."""

    model: SpeakerEncoder  # wave [B, T] float32 16 kHz -> [B, embed_dim]
    dims: list[int]
    weight: float
    name: str  # identifies the weights, e.g. "b2-vox2-ft_lm": names its embedding cache

    @property
    def embed_dim(self) -> int:
        return int(self.model.embed_dim)


_Model = TypeVar("_Model", bound=nn.Module)


def freeze_teacher(model: _Model) -> _Model:
    """No gradients, eval mode, and `train()` pinned to eval.

    The pin is a guard: should a teacher ever end up under a parent module, that parent's
    `.train()` must not switch on its BatchNorm updates or dropout mid-run.
    """
    model.requires_grad_(False)
    model.eval()
    # A per-instance override on purpose (the model keeps its class), which mypy forbids for methods.
    model.train = types.MethodType(stay_in_eval, model)  # type: ignore[method-assign]
    return model


def teacher_name(cfg: TeacherConfig) -> str:
    """`b2-vox2-ft_lm` for a preset; the file stem for a checkpoint path (its name says it all)."""
    source = os.fspath(cfg.source)
    if names_a_file(source):
        return Path(source).stem
    train_type, dataset = default_weights(source, cfg.train_type, cfg.dataset)
    return f"{source}-{dataset}-{train_type}"


def load_teachers(configs: Sequence[TeacherConfig], device: torch.device | str = "cpu") -> list[Teacher]:
    """Load every `distill.teachers` entry with `load_pretrained`, frozen, on `device`."""
    teachers = []
    for cfg in configs:
        model = load_pretrained(cfg.source, train_type=cfg.train_type, dataset=cfg.dataset)
        # The faster inference form (equal outputs); run under no_grad, not inference_mode: its
        # outputs enter the loss, whose backward saves them.
        model = inference_form(freeze_teacher(model)).to(device)
        teachers.append(Teacher(model, [int(d) for d in cfg.dims], float(cfg.weight), teacher_name(cfg)))
    return teachers


def teacher_embeddings(
    teachers: Sequence[Teacher], wave: torch.Tensor, autocast_dtype: torch.dtype | None = None
) -> list[torch.Tensor]:
    """`wave [B, T]` -> one float32 `[B, E_t]` per teacher, without autograd.

    With `autocast_dtype` (bf16/fp16) teachers run under autocast on `wave`'s device type.
    """
    autocast = (
        torch.autocast(device_type=wave.device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else nullcontext()
    )
    with torch.no_grad(), autocast:
        return [teacher.model(wave).float() for teacher in teachers]


# ---------------------------------------------------------------------------- loss terms


def adapter_key(teacher_index: int, dim: int) -> str:
    return f"t{teacher_index}_d{dim}"


class DistillationAdapters(nn.Module):
    """One `Linear(d -> E_t, bias=False)` per (teacher t, supervised prefix d), keyed `"t0_d64"`.

    Training-only: saved in training checkpoints beside the student, never in the exported
    student. Each starts as the identity on the first min(d, E_t) coordinates, so a student
    whose prefix already is (the start of) the teacher's embedding starts at zero loss.
    """

    def __init__(self, teachers_spec: Sequence[tuple[int, Sequence[int]]]):
        """`teachers_spec`: one `(teacher_embed_dim, supervised dims)` per teacher."""
        super().__init__()
        self.adapters = nn.ModuleDict()
        for index, (embed_dim, dims) in enumerate(teachers_spec):
            for dim in dims:
                linear = nn.Linear(dim, embed_dim, bias=False)
                with torch.no_grad():
                    linear.weight.zero_()
                    linear.weight.fill_diagonal_(1.0)
                self.adapters[adapter_key(index, dim)] = linear

    def forward(self, teacher_index: int, student_prefix: torch.Tensor) -> torch.Tensor:
        """`student_prefix [B, d]` -> `[B, E_t]` in teacher `teacher_index`'s space."""
        return self.adapters[adapter_key(teacher_index, student_prefix.shape[1])](student_prefix)


def embedding_distance(adapted_student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of `1 - cos(adapted_student [B, E], teacher [B, E])`; 0-d."""
    return (1.0 - F.cosine_similarity(adapted_student.float(), teacher.float(), dim=1)).mean()


def cosine_matrix(embeddings: torch.Tensor) -> torch.Tensor:
    """`[B, D]` -> `[B, B]` pairwise cosine similarities (float32)."""
    unit = F.normalize(embeddings.float(), dim=1)
    return unit @ unit.T


def similarity_distance(student_prefix: torch.Tensor, teacher_cosines: torch.Tensor) -> torch.Tensor:
    """MSE between the off-diagonal entries of `cosine_matrix(student_prefix [B, d])` and
    `teacher_cosines [B, B]`; 0-d. Invariant to rotating or rescaling either side, so any d works.
    """
    student_cosines = cosine_matrix(student_prefix)
    batch = student_cosines.shape[0]
    if batch < 2:  # no pairs: nothing to match (kept in the graph so backward still works)
        return student_cosines.sum() * 0.0
    off_diagonal = ~torch.eye(batch, dtype=torch.bool, device=student_cosines.device)
    return (student_cosines - teacher_cosines)[off_diagonal].square().mean()


def labelled_rows(labels: torch.Tensor | None) -> torch.Tensor | None:
    """Boolean mask `[B]` of labelled samples, or None when the batch has no label at all."""
    if labels is None:
        return None
    mask = labels != UNLABELLED
    return mask if bool(mask.any()) else None


# ---------------------------------------------------------------------------- the combined loss


class DistillationLoss(nn.Module):
    """Weighted sum of the distillation terms over every (teacher, supervised prefix).

        total = embedding * sum_td w_t L_emb(t, d) / sum_td w_t
              + similarity * sum_td w_t L_sim(t, d) / sum_td w_t
              + aam * L_aam

    `w_t` is the teacher's weight; the normalisation keeps the scale of `embedding` and
    `similarity` independent of how many prefixes are supervised. A term whose weight is 0 is
    not computed, and its parameters are not created, so DDP never sees unused parameters:
    with `embedding: 0` there are no adapters, with `aam: 0` the AAM loss is not kept.
    """

    def __init__(
        self,
        student_dims: Sequence[int],
        teachers_spec: Sequence[tuple[int, Sequence[int], float]],
        weights: DistillLossesConfig,
        aam_loss: MatryoshkaAAMLoss | None = None,
    ):
        """`teachers_spec`: one `(teacher_embed_dim, supervised student dims, weight)` per teacher."""
        super().__init__()
        self.student_dims = [int(d) for d in student_dims]
        self.teachers_spec = [(int(e), [int(d) for d in dims], float(w)) for e, dims, w in teachers_spec]
        self.weights = weights
        for index, (_, dims, weight) in enumerate(self.teachers_spec):
            require(teacher_dims_problem(dims, self.student_dims), f"distill.teachers[{index}].dims")
            require(weight_problem(weight), f"distill.teachers[{index}].weight")
        self.adapters = (
            DistillationAdapters([(e, dims) for e, dims, _ in self.teachers_spec]) if weights.embedding > 0 else None
        )
        if weights.aam > 0:
            if aam_loss is None:
                raise ValueError(
                    f"distill.losses.aam is {weights.aam} but no MatryoshkaAAMLoss was given; "
                    "build one for the student's dims, or set distill.losses.aam: 0"
                )
            if aam_loss.dims[-1] > self.student_dims[-1]:
                raise ValueError(
                    f"the AAM loss covers dims {aam_loss.dims}, beyond the student's largest "
                    f"dim {self.student_dims[-1]}"
                )
        self.aam_loss = aam_loss if weights.aam > 0 else None
        self._pair_weight_sum = sum(w * len(dims) for _, dims, w in self.teachers_spec)

    def forward(
        self,
        student_embedding: torch.Tensor,
        teacher_embeddings: Sequence[torch.Tensor],
        labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`student_embedding [B, max_dim]`, one `[B, E_t]` per teacher, `labels [B]` int64 or None
        (`-1` marks an unlabelled sample) -> (total loss, stats of detached 0-d tensors).

        Stats: `embedding/t0_d64`, `similarity/t0_d64`, `aam`, `aam/accuracy_d64`, `total`.
        """
        if len(teacher_embeddings) != len(self.teachers_spec):
            raise ValueError(
                f"got {len(teacher_embeddings)} teacher embeddings for {len(self.teachers_spec)} configured teachers"
            )
        student = student_embedding.float()
        stats: dict[str, torch.Tensor] = {}
        embedding_sum = similarity_sum = student.new_zeros(())
        for index, ((embed_dim, dims, weight), teacher) in enumerate(zip(self.teachers_spec, teacher_embeddings)):
            if teacher.shape != (student.shape[0], embed_dim):
                raise ValueError(
                    f"teacher {index} embedding has shape {tuple(teacher.shape)}, expected "
                    f"[{student.shape[0]}, {embed_dim}]"
                )
            teacher_cosines = cosine_matrix(teacher) if self.weights.similarity > 0 else None
            for dim in dims:
                prefix, key = student[:, :dim], adapter_key(index, dim)
                if self.adapters is not None:
                    term = embedding_distance(self.adapters(index, prefix), teacher)
                    stats[f"embedding/{key}"] = term.detach()
                    embedding_sum = embedding_sum + weight * term
                if teacher_cosines is not None:
                    term = similarity_distance(prefix, teacher_cosines)
                    stats[f"similarity/{key}"] = term.detach()
                    similarity_sum = similarity_sum + weight * term
        normaliser = self._pair_weight_sum if self._pair_weight_sum > 0 else 1.0
        total = (self.weights.embedding * embedding_sum + self.weights.similarity * similarity_sum) / normaliser
        if self.aam_loss is not None:
            rows = labelled_rows(labels)
            if rows is None or labels is None:  # rows is None whenever labels is
                raise ValueError(
                    f"distill.losses.aam is {self.weights.aam} but this batch has no speaker labels "
                    "(labels None or all -1); for unlabelled shards set distill.losses.aam: 0"
                )
            aam, aam_stats = self.aam_loss(student[rows], labels[rows])
            total = total + self.weights.aam * aam
            stats["aam"] = aam.detach()
            stats.update({f"aam/accuracy_d{d}": v for d, v in aam_stats["accuracy"].items()})
        stats["total"] = total.detach()
        return total, stats


def build_distillation_loss(
    student_dims: Sequence[int],
    teachers: Sequence[Teacher],
    weights: DistillLossesConfig,
    aam_loss: MatryoshkaAAMLoss | None = None,
) -> DistillationLoss:
    """`DistillationLoss` for loaded teachers (their embed dims, dims and weights)."""
    spec = [(t.embed_dim, t.dims, t.weight) for t in teachers]
    return DistillationLoss(student_dims, spec, weights, aam_loss)


# ---------------------------------------------------------------------------- embedding cache

CACHE_FORMAT = "mrl-dist-teacher-cache/1"
CacheKey = tuple[str, int, int]  # (sample key, crop start frame, crop length in frames)


class TeacherEmbeddingCache:
    """One teacher's embeddings of audio crops, keyed `(sample key, crop start, crop length)`.

    Only pays off with fixed crops (the same start for a sample every epoch, e.g. start 0):
    random crops almost never repeat, so every lookup misses. Keys ignore augmentation: feed
    the teacher the clean crop (or run without augmentation), or the first augmented version
    seen is what is cached.

    On disk: `{folder}/{teacher}.{part}.pt`, a frozen-outputs file (data/frozen_outputs.py, as
    the pooled-feature cache's): `{format, teacher, embed_dim, keys, starts, lengths,
    embeddings [N, E] float32}`. Every rank writes its own `part` (e.g. `rank0`) so ranks never
    overwrite each other, and reads all parts at start.
    """

    def __init__(self, folder: str | os.PathLike, teacher: str, embed_dim: int, part: str = "rank0"):
        self.folder, self.teacher, self.embed_dim, self.part = Path(folder), teacher, int(embed_dim), part
        self._entries: dict[CacheKey, torch.Tensor] = {}
        self._own: list[CacheKey] = []  # entries this part's file holds (loaded or put here)
        self._dirty = False
        for path in sorted(self.folder.glob(f"{teacher}.*.pt")):
            self._load(path, own=path == self.path)

    @property
    def path(self) -> Path:
        return self.folder / f"{self.teacher}.{self.part}.pt"

    def __len__(self) -> int:
        return len(self._entries)

    def _load(self, path: Path, own: bool) -> None:
        fields = ("teacher", "embed_dim", "lengths", "embeddings")
        payload = read_outputs_file(
            path, CACHE_FORMAT, fields, remedy="delete it to rebuild the teacher embedding cache", error=CheckpointError
        )
        if payload["teacher"] != self.teacher or payload["embed_dim"] != self.embed_dim:
            raise CheckpointError(
                f"{path}: teacher embedding cache for {payload['teacher']!r} ({payload['embed_dim']}-D) does not "
                f"match teacher {self.teacher!r} ({self.embed_dim}-D); delete {self.folder} to rebuild it"
            )
        rows = payload["embeddings"].float().unbind(0)
        keys = zip(payload["keys"], payload["starts"].tolist(), payload["lengths"].tolist())
        for key, row in zip(keys, rows):
            self._entries[key] = row
            if own:
                self._own.append(key)

    @staticmethod
    def _keys(
        keys: Sequence[str], starts: Sequence[int] | torch.Tensor, lengths: Sequence[int] | torch.Tensor
    ) -> list[CacheKey]:
        starts = starts.tolist() if isinstance(starts, torch.Tensor) else starts
        lengths = lengths.tolist() if isinstance(lengths, torch.Tensor) else lengths
        if not len(keys) == len(starts) == len(lengths):
            raise ValueError(
                f"cache keys, starts and lengths differ in length: {len(keys)}, {len(starts)}, {len(lengths)}"
            )
        return [(str(k), int(s), int(n)) for k, s, n in zip(keys, starts, lengths)]

    def get(
        self,
        keys: Sequence[str],
        starts: Sequence[int] | torch.Tensor,
        lengths: Sequence[int] | torch.Tensor,
        device: torch.device | str | None = None,
    ) -> torch.Tensor | None:
        """Embeddings `[B, E]` float32 of these crops, or None when any one is missing."""
        wanted = self._keys(keys, starts, lengths)
        if not wanted or any(key not in self._entries for key in wanted):
            return None
        rows = torch.stack([self._entries[key] for key in wanted])
        return rows if device is None else rows.to(device)

    def put(
        self,
        keys: Sequence[str],
        starts: Sequence[int] | torch.Tensor,
        lengths: Sequence[int] | torch.Tensor,
        embeddings: torch.Tensor,
    ) -> None:
        """Remember `embeddings [B, E]` for these crops (kept on CPU as float32)."""
        wanted = self._keys(keys, starts, lengths)
        if embeddings.shape != (len(wanted), self.embed_dim):
            raise ValueError(
                f"cache {self.teacher}: embeddings have shape {tuple(embeddings.shape)}, expected "
                f"[{len(wanted)}, {self.embed_dim}]"
            )
        rows = embeddings.detach().float().cpu().unbind(0)
        for key, row in zip(wanted, rows):
            if key not in self._entries:
                self._own.append(key)
            self._entries[key] = row
            self._dirty = True

    def flush(self) -> Path | None:
        """Write this part's entries to `path` (atomically); returns it, or None if nothing changed."""
        if not self._dirty:
            return None
        own = list(dict.fromkeys(self._own))
        payload = {
            "format": CACHE_FORMAT,
            "teacher": self.teacher,
            "embed_dim": self.embed_dim,
            "keys": [key for key, _, _ in own],
            "starts": torch.tensor([start for _, start, _ in own], dtype=torch.int64),
            "lengths": torch.tensor([length for _, _, length in own], dtype=torch.int64),
            "embeddings": (torch.stack([self._entries[key] for key in own]) if own else torch.zeros(0, self.embed_dim)),
        }
        self._dirty = False
        return write_outputs_file(self.path, payload)


def teacher_cache_dir(train_manifest: str | os.PathLike) -> Path:
    """The cache folder beside the training shards: `{manifest folder}/teacher-cache`."""
    return Path(train_manifest).parent / "teacher-cache"


def open_teacher_caches(
    teachers: Sequence[Teacher], folder: str | os.PathLike, part: str = "rank0"
) -> list[TeacherEmbeddingCache]:
    return [TeacherEmbeddingCache(folder, t.name, t.embed_dim, part) for t in teachers]


def cached_teacher_embeddings(
    teachers: Sequence[Teacher],
    caches: Sequence[TeacherEmbeddingCache],
    wave: torch.Tensor,
    keys: Sequence[str],
    starts: Sequence[int] | torch.Tensor,
    lengths: Sequence[int] | torch.Tensor,
    autocast_dtype: torch.dtype | None = None,
) -> list[torch.Tensor]:
    """Like `teacher_embeddings`, reading each teacher's batch from its cache when all of it is
    there and computing (then caching) it otherwise. Output on `wave`'s device."""
    outputs = []
    for teacher, cache in zip(teachers, caches, strict=True):
        cached = cache.get(keys, starts, lengths, device=wave.device)
        if cached is None:
            cached = teacher_embeddings([teacher], wave, autocast_dtype)[0]
            cache.put(keys, starts, lengths, cached)
        outputs.append(cached)
    return outputs
