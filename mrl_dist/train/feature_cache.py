"""Build the pooled-feature cache of a frozen-trunk run (`launch/cache_features.py`).

    python launch/cache_features.py --config configs/a100.yaml --output features/b2-vox2 \
        --crops-per-utterance 4
    accelerate launch --config_file configs/accelerate/multi-gpu.yaml launch/cache_features.py ...

Runs the config's trunk (`model.backbone`, frozen, eval, inference mode, the configured
precision) once over `data.train`: K seeded crops of `data.crop_seconds` per utterance, each
with its own augmentation draw (`data.augment`). Each rank takes every R-th audio shard and
writes one feature file per shard; a re-run skips the files already there (resume). Rank 0
writes `features.manifest.json` last, with the trunk's fingerprint that training checks.
Format and loader: mrl_dist/data/features.py.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm import tqdm

from ..config import AugmentConfig, Config, ConfigError
from ..data.audio import seconds_to_samples
from ..data.augment import check_augment_sources
from ..data.features import (
    FEATURES_FORMAT,
    FEATURES_MANIFEST,
    crop_batches,
    feature_file_name,
    read_feature_file,
    trunk_fingerprint,
    write_feature_file,
    write_manifest,
)
from ..data.manifest import write_json_atomic
from ..data.mix import CorpusPart, mix_names, resolve_training_mix
from ..data.shard_reader import SkipCounter
from ..models import inference_form
from ..models.encoder import SpeakerEncoder
from ..precision import autocast_dtype
from .modes import backbone_is_pretrained, load_backbone

log = logging.getLogger(__name__)

PLAN_FILE = "features.plan.json"  # what the cache is being built for; a resume must match it


def run_features_folder(cfg: Config) -> Path | None:
    """The cache a run trains from: data.features, `RUN/features` for "auto", None without one."""
    if cfg.data.features is None:
        return None
    return Path(cfg.run_dir) / "features" if cfg.data.features == "auto" else Path(cfg.data.features)


def build_run_feature_cache(cfg: Config, accelerator: Accelerator) -> None:
    """data.features: auto: the run's own cache, built into `RUN/features` by the run's ranks
    (`data.feature_crops_per_utterance` crops each); nothing once an earlier start finished it."""
    folder = run_features_folder(cfg)
    if cfg.data.features != "auto" or folder is None or (folder / FEATURES_MANIFEST).is_file():
        return
    crops = cfg.data.feature_crops_per_utterance
    build_feature_cache(cfg, folder, crops, progress=accelerator.is_main_process, accelerator=accelerator)


def check_trunk_is_frozen(cfg: Config, what: str) -> None:
    """Features of a trunk are only reusable while it does not train."""
    tcfg = cfg.training
    if tcfg.mode != "mrl":
        raise ConfigError("training.mode", f"is {tcfg.mode!r}; {what} needs mode 'mrl' with a frozen trunk")
    if not tcfg.freeze_backbone or tcfg.unfreeze_after_steps is not None:
        raise ConfigError(
            "training.freeze_backbone",
            f"{what} needs a trunk frozen for the whole run (freeze_backbone: true, "
            f"unfreeze_after_steps: null); got freeze_backbone={tcfg.freeze_backbone}, "
            f"unfreeze_after_steps={tcfg.unfreeze_after_steps}",
        )
    if cfg.model.adapters is not None:  # they change the trunk's output as they train
        raise ConfigError(
            "model.adapters",
            f"{what} caches the base trunk's features, which adapters change; set model.adapters: null",
        )


def cache_fields(
    cfg: Config, fingerprint: str, crops_per_utterance: int, pooled_dim: int, num_speakers: int | None
) -> dict[str, Any]:
    """What determines the cache's content (checked on resume and when training from it)."""
    return {
        "trunk_fingerprint": fingerprint,
        "backbone": cfg.model.backbone,
        "crop_seconds": cfg.data.crop_seconds,
        "crops_per_utterance": crops_per_utterance,
        "seed": cfg.seed,
        "augment": dataclasses.asdict(cfg.data.augment) if cfg.data.augment.active else None,
        "precision": cfg.training.mixed_precision,
        "pooled_dim": pooled_dim,
        "num_speakers": num_speakers,
        "source": source_text(cfg.data.train),
    }


def source_text(source: str | list) -> str:
    """data.train as the cache records it: the path, or each corpus of a mix as `name=manifest`
    (not the weights: they change how the loader draws, not what the cache holds)."""
    if isinstance(source, str):
        return source
    return " + ".join(f"{name}={entry.manifest}" for name, entry in zip(mix_names(source), source))


def _check_plan(output: Path, fields: dict[str, Any]) -> None:
    """A folder being built (or built) for other settings is refused: its files would mix."""
    for name in (PLAN_FILE, FEATURES_MANIFEST):
        if not (output / name).is_file():
            continue
        previous = json.loads((output / name).read_text())
        differing = sorted(k for k in fields if previous.get(k) != fields[k])
        if differing:
            raise ConfigError(
                differing[0],
                f"{output} holds a cache made with other settings "
                f"({', '.join(differing)} differ); use another --output or delete it",
            )


@torch.inference_mode()
def _shard_features(
    trunk: SpeakerEncoder,
    url: str,
    part: CorpusPart,
    cfg: Config,
    crops_per_utterance: int,
    batch_size: int,
    augment: AugmentConfig | None,
    device: torch.device,
    dtype: torch.dtype | None,
    skips: SkipCounter,
):
    keys, labels, starts, augment_ids, pooled = [], [], [], [], []
    for batch in crop_batches(
        url,
        crops_per_utterance=crops_per_utterance,
        crop_frames=seconds_to_samples(cfg.data.crop_seconds),
        seed=cfg.seed,
        batch_size=batch_size,
        augment=augment,
        skips=skips,
        label_offset=part.label_offset,
        key_prefix=part.key_prefix,
    ):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            features = trunk.pooled(batch["wave"].to(device))
        pooled.append(features.float().cpu())
        keys += batch["key"]
        labels.append(batch["label"])
        starts.append(batch["start"])
        augment_ids.append(batch["augment_id"])
    empty = torch.zeros(0, dtype=torch.int64)
    return (
        keys,
        torch.cat(labels) if labels else empty,
        torch.cat(starts) if starts else empty,
        torch.cat(augment_ids) if augment_ids else empty,
        torch.cat(pooled) if pooled else torch.zeros(0, trunk.pool_out_dim),
    )


def build_feature_cache(
    cfg: Config,
    output: str | Path,
    crops_per_utterance: int = 1,
    batch_size: int | None = None,
    progress: bool = True,
    accelerator: Accelerator | None = None,
) -> dict[str, Any]:
    """Write the cache (see module doc); returns {"manifest", "files", "crops", "seconds", "skipped"}.

    `accelerator`: the running one (the trainer's, for `data.features: auto`); else one is made."""
    check_trunk_is_frozen(cfg, "launch/cache_features.py")
    if cfg.data.augment.speed_perturb:
        raise ConfigError(
            "data.augment.speed_perturb",
            "relabels speakers per speed; the feature cache does not support it (noise and reverberation it does)",
        )
    if crops_per_utterance < 1:
        raise ValueError(f"--crops-per-utterance must be >= 1, got {crops_per_utterance}")
    if not backbone_is_pretrained(cfg):
        log.warning("model.backbone %s is not pretrained: caching the features of a random trunk", cfg.model.backbone)
    precision = cfg.training.mixed_precision
    if accelerator is None:
        accelerator = Accelerator(
            mixed_precision=precision if torch.cuda.is_available() or precision != "fp16" else "no"
        )
    rank, world = accelerator.process_index, accelerator.num_processes
    device = accelerator.device
    dtype = autocast_dtype(precision)
    trunk = load_backbone(cfg).eval().requires_grad_(False)
    fingerprint = trunk_fingerprint(trunk, trunk.model_config)  # of the weights as trained, before folding
    trunk = inference_form(trunk).to(device)
    source = resolve_training_mix(cfg.data.train)
    part_of = source.part_of_url()
    output = Path(output)
    fields = cache_fields(cfg, fingerprint, crops_per_utterance, trunk.pool_out_dim, source.num_speakers)
    _check_plan(output, fields)  # on every rank, so that all of them stop, not rank 0 alone
    if accelerator.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        write_json_atomic(output / PLAN_FILE, {"format": FEATURES_FORMAT, **fields})
    accelerator.wait_for_everyone()
    augment = cfg.data.augment if cfg.data.augment.active else None
    if augment is not None:
        check_augment_sources(augment)

    start = time.perf_counter()
    skips = SkipCounter(f"feature cache rank {rank}")
    mine = source.urls[rank::world]
    bar = tqdm(mine, desc=f"caching features (rank {rank})", unit="shard", disable=not progress or rank != 0)
    for url in bar:
        path = output / feature_file_name(url)
        if path.is_file():
            continue  # written by an earlier (interrupted) run
        keys, labels, starts, augment_ids, pooled = _shard_features(
            trunk,
            url,
            part_of[url],
            cfg,
            crops_per_utterance,
            batch_size or cfg.validation.batch_size * 4,
            augment,
            device,
            dtype,
            skips,
        )
        write_feature_file(path, url, keys, labels, starts, augment_ids, pooled)
    accelerator.wait_for_everyone()
    result: dict[str, Any] = {"seconds": time.perf_counter() - start, "skipped": skips.by_reason}
    if accelerator.is_main_process:
        mixed = len(source.parts) > 1
        files = [
            (name, len(read_feature_file(output / name)["keys"]), part_of[url].name if mixed else "")
            for url in source.urls
            for name in [feature_file_name(url)]
        ]
        manifest = write_manifest(output, fields, files)
        (output / PLAN_FILE).unlink(missing_ok=True)
        result.update(manifest=str(manifest), files=len(files), crops=sum(n for _, n, _ in files))
        log.info(
            "feature cache %s: %d crops in %d files, %.1f s",
            output / FEATURES_MANIFEST,
            result["crops"],
            len(files),
            result["seconds"],
        )
    accelerator.wait_for_everyone()
    return result
