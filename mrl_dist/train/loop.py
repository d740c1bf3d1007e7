"""The training loop: one process per device, launched by `accelerate launch` (or plain python).

    shards --(each rank its own resampled stream)--> batches --> TrainModule (DDP) --> loss
    every logging.every_steps      : a line to tqdm, train.log, TensorBoard/wandb (rank 0)
    every validation.every_steps   : EER per MRL dim on the val trials (rank 0), metrics.jsonl, best.pt
    every checkpoint.every_steps   : accelerate.save_state -> checkpoints/step-N, last.pt
    SIGTERM / SIGUSR1              : checkpoint at the next step boundary, then exit 0
    training.unfreeze_after_steps  : the trunk unfreezes once; only the DDP wrapper is rebuilt

Train/eval policy: see `TrainModule` (frozen parts eval, trainable parts train during steps,
eval during validation; `training.freeze_bn_stats`). Collectives and their timeouts: see
`collectives.py`. DeepSpeed: see `ds_config.py`.

Batches never pass through `accelerator.prepare`: every rank already reads its own endless
stream (see mrl_dist.data.pipeline), and an epoch has the same number of steps everywhere.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import DistributedType, set_seed

from ..config import Config, save_config
from ..data.features import (
    FEATURES_MANIFEST,
    FeatureCache,
    FeatureLoader,
    check_cache_fits,
    open_feature_cache,
    read_feature_file,
    trunk_fingerprint,
)
from ..data.manifest import read_manifest
from ..data.pipeline import make_eval_loader, make_train_loader
from ..eval.extract import POOLED, embed_pooled_features, evaluate_embeddings, extract_embeddings
from ..eval.metrics import select_metric
from ..models import ReDimNet, collect_pooled, inference_form
from ..precision import autocast_dtype
from . import checkpointing as ckpt
from . import ds_config
from .class_init import class_mean_embeddings, set_class_weights
from .collectives import Collectives
from .feature_cache import build_feature_cache
from .modes import Mode, TrainModule, backbone_is_pretrained, describe_parameters, make_mode
from .schedule import margin_at
from .setup import BadStepError, StopRequest, make_accelerator, make_optimizer, make_scheduler, rewrap_ddp
from .step import TrainingStep
from .tracking import Tracker

log = logging.getLogger(__name__)

# Seed offsets that keep the trainer's random streams apart (any distinct primes would do).
PCA_STREAM_SEED_OFFSET = 104729  # the batches the PCA head is fitted on, apart from training's
RESUME_STREAM_SEED_PER_STEP = 7919  # a resumed epoch's fresh stream, seeded by the resume step
CLASS_INIT_SEED_OFFSET = 15485863  # the batches the class means are taken over
RANK_SEED_FACTOR = 1009  # per-rank dropout / spec-augment randomness after the shared init


class Trainer:
    def __init__(self, cfg: Config, resume: str | None = None):
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)
        self.checkpoints = self.run_dir / "checkpoints"
        self.accelerator = make_accelerator(cfg)
        acc = self.accelerator
        self.rank, self.world_size = acc.process_index, acc.num_processes
        self.is_deepspeed = acc.distributed_type == DistributedType.DEEPSPEED
        self.collectives = Collectives(
            self.rank,
            self.world_size,
            acc.device,
            step_timeout=timedelta(minutes=cfg.training.collective_timeout_minutes),
            main_wait_timeout=timedelta(minutes=cfg.validation.timeout_minutes),
        )
        if acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
        acc.wait_for_everyone()

        self.tracker_lines: list[str] = []  # said during set-up, written once the tracker exists
        self.resume_dir = ckpt.resolve_resume(resume, self.checkpoints)
        self.state: dict[str, Any] = {
            "step": 0,
            "epoch": 0,
            "batches_into_epoch": 0,
            "best_metric": None,
            "bad_steps_total": 0,
            "skipped_samples": 0,
        }
        if self.resume_dir is not None:
            self.state.update(ckpt.read_trainer_state(self.resume_dir))

        tcfg = cfg.training
        self.batches_per_epoch = tcfg.steps_per_epoch * tcfg.grad_accum
        self.mode: Mode = make_mode(cfg)  # what it needs from the data, before building the loader
        self.features = self._open_features()
        self.train_loader = self._train_loader(epoch=self.state["epoch"])
        self.partial_epoch_loader = None  # the rest of a resumed epoch, see _batches
        self.skipped_before_start = self.state["skipped_samples"]  # corrupt samples of earlier runs
        self.num_classes = self.train_loader.num_classes or 0
        if self.mode.needs_labels and not self.num_classes:
            raise ValueError(
                f"data.train: {cfg.data.train} carries no speaker labels (a manifest gives them); "
                f"training.mode {tcfg.mode} needs them"
                + (" (set distill.losses.aam: 0 to distil without labels)" if tcfg.mode == "distill" else "")
            )

        set_seed(cfg.seed)  # identical initial weights on every rank
        module = self.mode.build(self.num_classes, self._pca_features, resuming=self.resume_dir is not None)
        if self.features is not None:
            check_cache_fits(
                self.features, trunk_fingerprint(module.model, module.model.model_config), cfg.data.crop_seconds
            )
            module.from_features = True
        fitted = self.mode.head_fitted_on_main(module, resuming=self.resume_dir is not None)
        if fitted is not None:  # rank 0 fitted it alone; every rank starts from rank 0's
            self.collectives.broadcast_from_main(
                [*fitted.parameters(), *fitted.buffers()], "receiving the PCA head from rank 0"
            )
        if self._class_means_wanted(module):
            self._init_class_weights(module)
        self.mode.unfreeze_if_due(module, self.state["step"])  # a resume past the unfreeze step
        module.train()  # the train/eval policy (TrainModule); a pretrained start arrives in eval mode
        self.raw_optimizer = make_optimizer(cfg, module, self.mode.trunk_parameters(module))
        self.raw_scheduler = make_scheduler(cfg, self.raw_optimizer)
        self.module, self.optimizer, self.scheduler = acc.prepare(module, self.raw_optimizer, self.raw_scheduler)
        self.training_step = TrainingStep(acc, self.optimizer, self.scheduler, self.mode, tcfg, acc.device)
        self.autocast_dtype = autocast_dtype(tcfg.mixed_precision)
        self.mode.place_on_device(acc.device, self.autocast_dtype, self.rank)
        if self.resume_dir is not None:
            acc.load_state(str(self.resume_dir))
        # Per-rank randomness for spec augment and dropout, after the shared initialisation.
        torch.manual_seed(cfg.seed * RANK_SEED_FACTOR + self.rank + RESUME_STREAM_SEED_PER_STEP * self.state["step"])
        self.val_pooled: dict | None = None  # pooled features of the val utterances while the trunk is frozen
        self.stop = StopRequest()
        self.tracker = Tracker(cfg, self.run_dir, acc.is_main_process, self.state["step"])
        for line in self.tracker_lines:
            self.tracker.write_line(line)

    # ------------------------------------------------------------------ data
    def _train_loader(self, epoch: int, seed_offset: int = 0, batches: int | None = None):
        cfg = self.cfg
        if self.features is not None:
            return FeatureLoader(
                self.features,
                batch_size=cfg.training.batch_size,
                steps_per_epoch=batches or self.batches_per_epoch,
                seed=cfg.seed + seed_offset,
                rank=self.rank,
                world_size=self.world_size,
                epoch=epoch,
                crops_per_speaker=cfg.data.crops_per_speaker,
            )
        augment = cfg.data.augment if cfg.data.augment.active else None
        return make_train_loader(
            cfg.data.train,
            batch_size=cfg.training.batch_size,
            crop_seconds=cfg.data.crop_seconds,
            num_workers=cfg.data.num_workers,
            seed=cfg.seed + seed_offset,
            rank=self.rank,
            world_size=self.world_size,
            epoch=epoch,
            shuffle_buffer=cfg.data.shuffle_buffer,
            augment=augment,
            steps_per_epoch=batches or self.batches_per_epoch,
            pin_memory=torch.cuda.is_available(),
            fixed_crops=self.mode.fixed_crops,
        )

    def _open_features(self) -> FeatureCache | None:
        """data.features: a cache folder, or "auto": this run's own, built first in RUN/features."""
        cfg = self.cfg
        if cfg.data.features is None:
            return None
        folder = Path(cfg.data.features) if cfg.data.features != "auto" else self.run_dir / "features"
        if cfg.data.features == "auto" and not (folder / FEATURES_MANIFEST).is_file():
            build_feature_cache(
                cfg,
                folder,
                cfg.data.feature_crops_per_utterance,
                progress=self.accelerator.is_main_process,
                accelerator=self.accelerator,
            )
        return open_feature_cache(folder)

    def _pca_features(self, redimnet: ReDimNet) -> torch.Tensor | None:
        """Pooled features for the PCA head: rank 0 only, on the accelerator (the others receive
        the fitted head). The batches are rank 0's, from a stream apart from training's."""
        if not self.accelerator.is_main_process:
            return None
        loader = self._train_loader(epoch=0, seed_offset=PCA_STREAM_SEED_OFFSET, batches=self.cfg.model.pca_batches)
        if self.features is not None:  # the cache holds them already
            return torch.cat([batch["pooled"] for batch in loader])
        redimnet.to(self.accelerator.device)
        return collect_pooled(redimnet, (batch["wave"] for batch in loader), self.cfg.model.pca_batches)

    def _class_means_wanted(self, module: TrainModule) -> bool:
        cfg = self.cfg
        return (
            cfg.loss.class_init == "mean"
            and self.resume_dir is None
            and backbone_is_pretrained(cfg)
            and module.aam_loss is not None
            and hasattr(module.model, "head")
        )

    def _init_class_weights(self, module: TrainModule) -> None:
        """loss.class_init: mean. Rank 0 averages the initial head's embeddings per speaker (every
        cached crop, or `loss.class_init_batches` batches of audio) and broadcasts the weights."""
        aam, model = module.aam_loss, module.model
        if self.accelerator.is_main_process:
            device = self.accelerator.device
            if self.features is not None:
                batches = ((p["pooled"].float(), p["labels"]) for p in map(read_feature_file, self.features.files))
                embed = model.to(device).head
            else:
                loader = self._train_loader(
                    epoch=0, seed_offset=CLASS_INIT_SEED_OFFSET, batches=self.cfg.loss.class_init_batches
                )
                batches = ((batch["wave"], batch["label"]) for batch in loader)
                fast = inference_form(model).to(device)
                embed = lambda wave: fast.head(fast.pooled(wave))  # noqa: E731
            was_training = model.training
            model.eval()
            means, counts = class_mean_embeddings(embed, batches, aam.num_classes, device)
            model.train(was_training)
            found = set_class_weights(aam, means, counts)
            self.tracker_lines.append(
                f"class weights: speaker means of {int(counts.sum())} crops for {found} of "
                f"{aam.num_classes} classes (the rest random)"
            )
        self.collectives.broadcast_from_main(list(aam.parameters()), "receiving the class weights from rank 0")

    def _batches(self) -> Iterator[dict]:
        """Endless batches from the saved data position: the rest of the current epoch, then
        whole epochs. A resumed epoch continues on a fresh stream seeded by the resume step
        (resampled shards make any position equivalent; replaying would waste decode time)."""
        epoch, done = self.state["epoch"], self.state["batches_into_epoch"]
        if done >= self.batches_per_epoch:  # saved right at the end of an epoch: the next one starts
            epoch, done = epoch + 1, 0
        if done:
            self.partial_epoch_loader = self._train_loader(
                epoch,
                seed_offset=RESUME_STREAM_SEED_PER_STEP * self.state["step"],
                batches=self.batches_per_epoch - done,
            )
            for batch in self.partial_epoch_loader:
                self.state["batches_into_epoch"] += 1
                yield batch
            epoch += 1
        while True:
            self.state["epoch"], self.state["batches_into_epoch"] = epoch, 0
            self.train_loader.set_epoch(epoch)
            for batch in self.train_loader:
                self.state["batches_into_epoch"] += 1
                yield batch
            epoch += 1

    def _skipped_samples(self) -> int:
        """Corrupt samples skipped so far by every rank's loaders, earlier runs of a resumed run included."""
        local = self.train_loader.skipped + (self.partial_epoch_loader.skipped if self.partial_epoch_loader else 0)
        total = self.collectives.sum(
            torch.tensor(float(local), device=self.accelerator.device),
            f"step {self.state['step']}: summing skipped-sample counts",
        )
        self.state["skipped_samples"] = self.skipped_before_start + int(total)
        return self.state["skipped_samples"]

    # ------------------------------------------------------------------ one step
    def _agree(self, finite: torch.Tensor) -> bool:
        """One all-reduce decides for every rank together: skip, stop, or go on."""
        stop = torch.tensor(float(self.stop.requested), device=self.accelerator.device)
        decision = self.collectives.sum(
            torch.stack([(~finite).float(), stop]),
            f"step {self.state['step'] + 1}: all-reduce of the skip/stop decision",
        )
        bad_ranks, stop_ranks = decision.tolist()
        self.stop.requested = stop_ranks > 0
        return bad_ranks == 0

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, Any]:
        cfg, acc, tcfg = self.cfg, self.accelerator, self.cfg.training
        self.stop.install()
        sizes = describe_parameters(acc.unwrap_model(self.module))
        self.tracker.write_line(
            f"mode={tcfg.mode} ranks={self.world_size} device={acc.device} precision={tcfg.mixed_precision} "
            f"classes={self.num_classes} parameters={sizes['parameters']} trainable={sizes['trainable']} "
            f"start_step={self.state['step']} run_dir={self.run_dir}"
        )
        if self.is_deepspeed:
            self.tracker.write_line(ds_config.NOT_GUARDED_NOTE)
        if self.state["step"] == 0 and cfg.validation.at_start and backbone_is_pretrained(cfg):
            self.validate()
        batches = self._batches()
        crops_per_step = tcfg.batch_size * tcfg.grad_accum * self.world_size
        window: dict[str, torch.Tensor] = {}
        window_steps = 0
        bad_in_row = 0
        status = "finished"
        while self.state["step"] < tcfg.max_steps:
            step = self.state["step"]
            raw = acc.unwrap_model(self.module)
            if self.mode.unfreeze_if_due(raw, step):
                self._rewrap_after_unfreeze()
                self.tracker.write_line(f"step {step}: backbone unfrozen")
            raw.set_margin(margin_at(step, cfg.loss))
            applied, stats = self.training_step(self.module, batches, self._agree)
            self.state["step"] = step = step + 1
            if applied:
                bad_in_row = 0
                for key, value in stats.items():
                    window[key] = window.get(key, 0) + value
                window_steps += 1
            else:
                bad_in_row += 1
                self.state["bad_steps_total"] += 1
                action = "counted, not skipped (DeepSpeed applied it)" if self.is_deepspeed else "step skipped"
                self.tracker.write_line(f"step {step}: non-finite loss or gradient, {action} ({bad_in_row} in a row)")
                if bad_in_row >= tcfg.max_bad_steps:
                    raise BadStepError(
                        f"{bad_in_row} steps in a row had a non-finite loss or gradient "
                        f"(training.max_bad_steps={tcfg.max_bad_steps}); lower "
                        "training.optimizer.lr or check the data"
                    )
            values = None
            if step % cfg.logging.every_steps == 0 and window_steps:
                values = {k: float(v) / window_steps for k, v in window.items()}
                values.update(
                    lr=self.scheduler.get_last_lr()[0],
                    epoch=self.state["epoch"],
                    skipped=self._skipped_samples(),
                    bad_steps=self.state["bad_steps_total"],
                )
                if cfg.loss.margin_warmup_steps:
                    values["margin"] = margin_at(step - 1, cfg.loss)
                window, window_steps = {}, 0
            self.tracker.step(step, crops_per_step, values)
            if self.stop.requested:
                self.tracker.write_line(f"step {step}: stop requested by signal, saving a checkpoint")
                self.save_checkpoint()
                status = "stopped"
                break
            if step % cfg.validation.every_steps == 0 or step == tcfg.max_steps:
                self.validate()
            if step % cfg.checkpoint.every_steps == 0 or step == tcfg.max_steps:
                self.save_checkpoint()
        self.tracker.close()
        acc.wait_for_everyone()
        acc.end_training()  # leaves the process group cleanly (gloo aborts at exit otherwise)
        return {
            "status": status,
            "step": self.state["step"],
            "best_metric": self.state["best_metric"],
            "run_dir": str(self.run_dir),
        }

    def _rewrap_after_unfreeze(self) -> None:
        self.val_pooled = None  # the trunk changes from now on
        self.module = rewrap_ddp(self.accelerator, self.module)

    # ------------------------------------------------------------------ validation, checkpoints
    def validate(self) -> dict[str, Any] | None:
        """EER per dim on the val trials, on rank 0; the other ranks wait (long timeout)."""
        acc, cfg = self.accelerator, self.cfg
        record = None
        if acc.is_main_process:
            model = self.mode.eval_model(acc.unwrap_model(self.module))
            trials = read_manifest(cfg.data.val).trials_path
            if trials is None:
                raise FileNotFoundError(f"data.val: {cfg.data.val} has no trials file; pack it with --trials")
            report, _, _ = evaluate_embeddings(model, self._val_embeddings(model), trials)
            record = {
                "step": self.state["step"],
                "epoch": self.state["epoch"],
                "eer": report["eer"],
                "min_dcf": report["min_dcf"],
                "threshold": report["threshold"],
            }
            self.tracker.validation(record)
            self._update_best(report)
        self.collectives.wait_for_main(f"step {self.state['step']}: waiting for rank 0 to validate")
        return record

    def _val_embeddings(self, model) -> dict:
        """Embeddings of the val utterances. With a frozen trunk its pooled features are computed
        once and every later validation runs only the head (seconds instead of a full pass)."""
        cfg, acc = self.cfg, self.accelerator
        frozen_trunk = getattr(model, "trunk_frozen", False) and hasattr(model, "head")
        if frozen_trunk and self.val_pooled is not None:
            return embed_pooled_features(model, self.val_pooled, device=acc.device)
        loader = make_eval_loader(
            cfg.data.val,
            None,
            max_seconds=cfg.validation.max_seconds,
            batch_size=cfg.validation.batch_size,
            num_workers=min(2, cfg.data.num_workers),
        )
        if not frozen_trunk:
            return extract_embeddings(model, loader, device=acc.device, autocast_dtype=self.autocast_dtype)
        self.val_pooled = extract_embeddings(
            inference_form(model), loader, device=acc.device, heads=[POOLED], autocast_dtype=self.autocast_dtype
        )
        return embed_pooled_features(model, self.val_pooled, device=acc.device)

    def _update_best(self, report: dict[str, Any]) -> None:
        metric_name = self.cfg.checkpoint.best_metric
        value = select_metric(report, metric_name)  # classifier runs report "native" alone
        best = self.state["best_metric"]
        if best is None or value < best:
            self.state["best_metric"] = value
            self.state["best_step"] = self.state["step"]
            self.mode.export(self.accelerator.unwrap_model(self.module), self.run_dir / "best.pt")
            self.tracker.write_line(f"new best {metric_name}={100 * value:.3f}% -> {self.run_dir / 'best.pt'}")

    def save_checkpoint(self) -> Path:
        acc, step = self.accelerator, self.state["step"]
        self._skipped_samples()  # the count goes into trainer_state.json
        temporary = ckpt.temporary_dir(self.checkpoints, step)
        if acc.is_main_process:
            shutil.rmtree(temporary, ignore_errors=True)
            temporary.mkdir(parents=True)
        acc.wait_for_everyone()
        # torch format: safetensors refuses buffers that share storage (the mel window after a load)
        acc.save_state(str(temporary), safe_serialization=False)
        acc.wait_for_everyone()
        self.mode.save_caches()
        final = ckpt.step_dir(self.checkpoints, step)
        if acc.is_main_process:
            ckpt.write_trainer_state(temporary, self.state)
            final = ckpt.finalize(self.checkpoints, step, self.cfg.checkpoint.keep_last)
            self.mode.export(acc.unwrap_model(self.module), self.run_dir / "last.pt")
            self.tracker.write_line(f"checkpoint {final}")
        acc.wait_for_everyone()
        return final


def train(cfg: Config, resume: str | None = None) -> dict[str, Any]:
    return Trainer(cfg, resume=resume).fit()
