"""What a training run or a feature-cache job needs, checked before anything expensive: before
the accelerator, the model, the loaders or a feature cache is built, so a missing checkpoint or
shard set costs seconds, not a cached pass over the data.

Checked (local paths only; see mrl_dist/preflight.py for what each check means):
    model.backbone, model.fusion.backend_checkpoint, distill.teachers[i].source (distill mode)
    data.train (unless data.features names a finished cache), its augmentation folders
    data.val with its trial list (validation scores it)
    data.features (a cache folder: finished and complete)
    run_dir (writable), --resume PATH (a checkpoint folder)
Every problem found is reported at once, in one line naming the config file. Not checked:
model.fusion.ptm.source (a Hugging Face id, resolved by transformers when the model is built).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..cli_errors import one_line
from ..config import Config
from ..data.mix import resolve_training_mix
from ..preflight import (
    checkpoint_problem,
    raise_problems,
    readable_file_problem,
    shard_source_problems,
    writable_output_problem,
)


def model_problems(cfg: Config, teachers: bool = True) -> list[str | None]:
    """The checkpoints the config names: the backbone (and SSRFNet's backend file), and with
    `teachers` the distillation teachers of a distill run."""
    pretrained = cfg.model.pretrained
    weights = None if pretrained is None else (pretrained.train_type, pretrained.dataset)
    problems = [checkpoint_problem(cfg.model.backbone, "model.backbone", weights)]
    fusion = cfg.model.fusion
    if fusion is not None and fusion.backend_checkpoint:
        problems.append(readable_file_problem(fusion.backend_checkpoint, "model.fusion.backend_checkpoint"))
    if teachers and cfg.training.mode == "distill":
        for index, teacher in enumerate(cfg.distill.teachers):
            problems.append(
                checkpoint_problem(
                    teacher.source, f"distill.teachers[{index}].source", (teacher.train_type, teacher.dataset)
                )
            )
    return problems


def training_audio_problems(cfg: Config) -> list[str | None]:
    """data.train's shards and the augmentation folders they are mixed with."""
    from ..data.augment import check_augment_sources

    problems: list[str | None] = []
    if isinstance(cfg.data.train, str):
        problems += shard_source_problems(cfg.data.train, "data.train")
    else:
        for index, corpus in enumerate(cfg.data.train):
            problems += shard_source_problems(corpus.manifest, f"data.train[{index}].manifest")
        if not any(problems):  # the manifests read: an empty corpus or a clash of names is next
            try:
                resolve_training_mix(cfg.data.train)
            except ValueError as error:
                problems.append(one_line(error))
    try:
        check_augment_sources(cfg.data.augment)
    except FileNotFoundError as error:
        problems.append(str(error))
    return problems


def feature_cache_problem(folder: str | os.PathLike) -> str | None:
    """A finished feature cache in `folder` (data.features), its files all there."""
    from ..data.features import FeatureCacheError, open_feature_cache

    try:
        open_feature_cache(folder)
    except FeatureCacheError as error:
        return str(error)
    return None


def resume_problem(cfg: Config, resume: str | None) -> str | None:
    """--resume PATH must be a training checkpoint folder ('latest' may find none: a fresh start)."""
    from .checkpointing import resolve_resume

    if resume is None or resume == "latest":
        return None
    try:
        resolve_resume(resume, Path(cfg.run_dir) / "checkpoints")
    except FileNotFoundError as error:
        return str(error)
    return None


def check_training_inputs(cfg: Config, config_path: str | os.PathLike, resume: str | None = None) -> None:
    """InputError naming `config_path` and every problem of the run's inputs and outputs."""
    problems = model_problems(cfg)
    if cfg.data.features in (None, "auto"):  # "auto": the run caches them from data.train first
        problems += training_audio_problems(cfg)
    else:
        problems.append(feature_cache_problem(cfg.data.features))
    problems += shard_source_problems(cfg.data.val, "data.val", trials_needed=True)
    problems.append(writable_output_problem(cfg.run_dir, "run_dir", folder=True))
    problems.append(resume_problem(cfg, resume))
    raise_problems(problems, where=config_path)


def check_feature_cache_inputs(cfg: Config, config_path: str | os.PathLike, output: str | os.PathLike) -> None:
    """The same for `launch/cache_features.py`: the trunk, data.train and the output folder."""
    problems = model_problems(cfg, teachers=False) + training_audio_problems(cfg)
    problems.append(writable_output_problem(output, "--output", folder=True))
    raise_problems(problems, where=config_path)
