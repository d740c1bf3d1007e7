"""The training loop: one process per device, launched by `accelerate launch` (or plain python).

    shards --(each rank its own resampled stream)--> batches --> TrainModule (DDP) --> loss
    every logging.every_steps      : a line to tqdm, train.log, TensorBoard/wandb (rank 0)
    every validation.every_steps   : EER per MRL dim on each validation set (rank 0), metrics.jsonl, best.pt
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import DistributedType, set_seed

from ..config import Config, save_config
from ..data.feature_loader import FeatureLoader
from ..data.features import check_cache_fits, open_feature_cache, read_feature_file, trunk_fingerprint
from ..data.mix import mix_weights
from ..data.pipeline import TrainLoader, make_train_loader
from ..eval.metrics import select_metric
from ..models import ReDimNetMRL, collect_pooled, inference_form
from ..models.encoder import SpeakerEncoder
from ..precision import autocast_dtype
from . import checkpointing as ckpt
from . import ds_config
from .class_init import class_means_wanted, start_at_class_means
from .feature_cache import build_run_feature_cache, run_features_folder
from .modes import Mode, TrainModule, backbone_is_pretrained, describe_parameters, load_backbone, make_mode
from .schedule import margin_at
from .setup import (
    BadStepError,
    StopRequest,
    make_accelerator,
    make_collectives,
    make_optimizer,
    make_scheduler,
    rewrap_ddp,
)
from .step import TrainingStep, compile_forward
from .tracking import Tracker
from .validation import Validator

log = logging.getLogger(__name__)

# Seed offsets that keep the trainer's random streams apart (any distinct primes would do).
PCA_STREAM_SEED_OFFSET = 104729  # the batches the PCA head is fitted on, apart from training's
RESUME_STREAM_SEED_PER_STEP = 7919  # a resumed epoch's fresh stream, seeded by the resume step
CLASS_INIT_SEED_OFFSET = 15485863  # the batches the class means are taken over
RANK_SEED_FACTOR = 1009  # per-rank dropout / spec-augment randomness after the shared init


class Trainer:
    """One run: set up in the phases below, in this order, then `fit`.

    _start_accelerator    the Accelerator (DDP, DeepSpeed, precision) and this rank's collectives
    _prepare_run_dir      RUN/ and RUN/config.yaml (rank 0)
    _restore_state        step, data position, best metric, counts of the checkpoint resumed from
    _build_feature_cache  data.features: auto: the frozen trunk once over the shards, into RUN/features
    _build_data           the mode, the pooled-feature cache or the audio stream, the training loader
    _build_module         backbone -> pooled features for a PCA head (rank 0) -> the mode's TrainModule,
                          the same on every rank (rank 0's fitted parts broadcast)
    _prepare_distributed  optimizer, schedule, accelerate.prepare, the checkpoint's weights
    _start_reporting      the stop flag, validation, train.log / TensorBoard / wandb
    """

    def __init__(self, cfg: Config, resume: str | None = None):
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)
        self.checkpoints = self.run_dir / "checkpoints"
        self.tracker_lines: list[str] = []  # said during set-up, written once the tracker exists
        self._start_accelerator()
        self._prepare_run_dir()
        self._restore_state(resume)
        self._build_feature_cache()
        self._build_data()
        module = self._build_module()
        self._prepare_distributed(module)
        self._start_reporting()

    # ------------------------------------------------------------------ set-up phases
    def _start_accelerator(self) -> None:
        self.accelerator = acc = make_accelerator(self.cfg)
        self.rank, self.world_size = acc.process_index, acc.num_processes
        self.is_deepspeed = acc.distributed_type == DistributedType.DEEPSPEED
        self.collectives = make_collectives(self.cfg, acc)

    def _prepare_run_dir(self) -> None:
        if self.accelerator.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.run_dir / "config.yaml")
        self.accelerator.wait_for_everyone()

    def _restore_state(self, resume: str | None) -> None:
        """`resume`: "latest", a checkpoint folder, or None (a fresh start). The weights, optimizer
        and RNG states load later, once prepared (`_prepare_distributed`)."""
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

    def _build_feature_cache(self) -> None:
        """data.features: auto: launch/cache_features.py's work on this run's ranks, before anything
        reads the data; a later start of the run (a resume) finds it finished and skips it."""
        build_run_feature_cache(self.cfg, self.accelerator)

    def _build_data(self) -> None:
        cfg, tcfg = self.cfg, self.cfg.training
        # The mode says what it needs of the data (labels, fixed crops) before the loader is built.
        self.mode: Mode = make_mode(cfg, self.resume_dir is not None, self.accelerator.is_main_process)
        folder = run_features_folder(cfg)
        self.features = open_feature_cache(folder) if folder is not None else None
        self.batches_per_epoch = tcfg.steps_per_epoch * tcfg.grad_accum
        self.train_loader = self._train_loader(epoch=self.state["epoch"])
        # The rest of a resumed epoch, see _batches.
        self.partial_epoch_loader: FeatureLoader | TrainLoader | None = None
        self.skipped_before_start = self.state["skipped_samples"]  # corrupt samples of earlier runs
        self.num_classes = self.train_loader.num_classes or 0
        if self.mode.needs_labels and not self.num_classes:
            raise ValueError(
                f"data.train: {cfg.data.train} carries no speaker labels (a manifest gives them); "
                f"training.mode {tcfg.mode} needs them"
                + (" (set distill.losses.aam: 0 to distil without labels)" if tcfg.mode == "distill" else "")
            )

    def _build_module(self) -> TrainModule:
        """The TrainModule, the same on every rank, in the train/eval policy's state."""
        cfg, plan = self.cfg, self.mode.head_plan
        set_seed(cfg.seed)  # identical initial weights on every rank
        backbone = load_backbone(cfg)
        if self.features is not None:  # refused before any of its features is used
            check_cache_fits(self.features, trunk_fingerprint(backbone, backbone.model_config), cfg.data.crop_seconds)
        pooled = self._pca_features(backbone) if plan is not None and plan.needs_pooled_features else None
        module = self.mode.build(backbone, self.num_classes, pooled, from_features=self.features is not None)
        if plan is not None and plan.fitted_on_main:  # every rank starts from the head rank 0 fitted
            head = module.mrl_model.head
            fitted = [*head.parameters(), *head.buffers()]
            self.collectives.broadcast_from_main(fitted, "receiving the PCA head from rank 0")
        if class_means_wanted(cfg, module.aam_loss, module.model, resuming=self.resume_dir is not None):
            self._init_class_weights(module)
        if cfg.loss.head_anchor > 0:  # after the broadcast: every rank anchors to rank 0's head
            module.anchor_head(cfg.loss.head_anchor)
        self.mode.unfreeze_if_due(module, self.state["step"])  # a resume past the unfreeze step
        module.train()  # the train/eval policy (TrainModule); a pretrained start arrives in eval mode
        return module

    def _prepare_distributed(self, module: TrainModule) -> None:
        cfg, acc, tcfg = self.cfg, self.accelerator, self.cfg.training
        self.raw_optimizer = make_optimizer(cfg, module, self.mode.trunk_parameters(module))
        self.raw_scheduler = make_scheduler(cfg, self.raw_optimizer)
        if tcfg.compile:  # in place, before the DDP wrapper (step.compile_forward says why)
            compile_forward(module)
        self.module, self.optimizer, self.scheduler = acc.prepare(module, self.raw_optimizer, self.raw_scheduler)
        self.training_step = TrainingStep(acc, self.optimizer, self.scheduler, self.mode, tcfg, acc.device)
        self.autocast_dtype = autocast_dtype(tcfg.mixed_precision)
        self.mode.place_on_device(acc.device, self.autocast_dtype, self.rank)
        if self.resume_dir is not None:
            acc.load_state(str(self.resume_dir))
        # Per-rank randomness for spec augment and dropout, after the shared initialisation.
        torch.manual_seed(cfg.seed * RANK_SEED_FACTOR + self.rank + RESUME_STREAM_SEED_PER_STEP * self.state["step"])

    def _start_reporting(self) -> None:
        self.stop = StopRequest()
        self.validator = Validator(self.cfg, self.accelerator.device, self.autocast_dtype)
        self.tracker = Tracker(self.cfg, self.run_dir, self.accelerator.is_main_process, self.state["step"])
        for line in self.tracker_lines:
            self.tracker.write_line(line)

    # ------------------------------------------------------------------ data
    def _train_loader(
        self, epoch: int, seed_offset: int = 0, batches: int | None = None
    ) -> FeatureLoader | TrainLoader:
        """This rank's loader of `batches` per epoch (default: an epoch's), from the feature cache
        or the audio; `seed_offset` keeps a stream (PCA, class means, a resumed epoch) apart."""
        cfg = self.cfg
        stream = dict(
            batch_size=cfg.training.batch_size,
            steps_per_epoch=batches or self.batches_per_epoch,
            seed=cfg.seed + seed_offset,
            rank=self.rank,
            world_size=self.world_size,
            epoch=epoch,
        )
        if self.features is not None:
            return FeatureLoader(
                self.features,
                crops_per_speaker=cfg.data.crops_per_speaker,
                corpus_weights=mix_weights(cfg.data.train),
                **stream,
            )
        return make_train_loader(
            cfg.data.train,
            crop_seconds=cfg.data.crop_seconds,
            num_workers=cfg.data.num_workers,
            shuffle_buffer=cfg.data.shuffle_buffer,
            augment=cfg.data.augment if cfg.data.augment.active else None,
            pin_memory=torch.cuda.is_available(),
            fixed_crops=self.mode.fixed_crops,
            **stream,
        )

    def _pca_features(self, backbone: SpeakerEncoder) -> torch.Tensor:
        """Pooled features [N, P] a PCA head is fitted on (rank 0; the others receive the head):
        `model.pca_batches` batches of a stream apart from training's, read from the feature cache
        or computed by `backbone` on the accelerator."""
        loader = self._train_loader(epoch=0, seed_offset=PCA_STREAM_SEED_OFFSET, batches=self.cfg.model.pca_batches)
        if self.features is not None:  # the cache holds them already
            return torch.cat([batch["pooled"] for batch in loader])
        backbone.to(self.accelerator.device)
        return collect_pooled(backbone, (batch["wave"] for batch in loader), self.cfg.model.pca_batches)

    def _init_class_weights(self, module: TrainModule) -> None:
        """loss.class_init: mean. Rank 0 averages the initial head's embeddings per speaker (every
        cached crop, or `loss.class_init_batches` batches of audio) and broadcasts the weights."""
        aam, model = module.aam_loss, module.model
        if aam is None:
            raise RuntimeError(
                "loss.class_init: mean starts the AAM class weights, but this mode's loss has no AAM part"
            )
        embed: Callable[[torch.Tensor], torch.Tensor]  # wave [B, T] or cached pooled [B, P] -> embedding [B, D]
        if self.accelerator.is_main_process:
            device = self.accelerator.device
            if self.features is not None:
                batches = ((p["pooled"].float(), p["labels"]) for p in map(read_feature_file, self.features.files))
                embed = module.mrl_model.to(device).head
            else:
                loader = self._train_loader(0, CLASS_INIT_SEED_OFFSET, batches=self.cfg.loss.class_init_batches)
                batches = ((batch["wave"], batch["label"]) for batch in loader)
                fast = inference_form(model).to(device)
                if isinstance(fast, ReDimNetMRL):
                    embed = lambda wave: fast.head(fast.pooled(wave))  # noqa: E731
                else:  # classifier mode: the backbone's own embedding
                    embed = fast
            self.tracker_lines.append(start_at_class_means(aam, model, embed, batches, device))
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
        stop = torch.tensor(float(self.stop.received), device=self.accelerator.device)
        decision = self.collectives.sum(
            torch.stack([(~finite).float(), stop]),
            f"step {self.state['step'] + 1}: all-reduce of the skip/stop decision",
        )
        bad_ranks, stop_ranks = decision.tolist()
        self.stop.agree(stop_ranks)
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
            if self.stop.agreed:
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
        self.validator.forget_pooled()  # the trunk changes from now on
        self.module = rewrap_ddp(self.accelerator, self.module)

    # ------------------------------------------------------------------ validation, checkpoints
    def validate(self) -> dict[str, Any] | None:
        """EER per dim on each validation set, on rank 0; the other ranks wait (long timeout).
        Returns the last set's metrics.jsonl record (rank 0; None on the others)."""
        acc = self.accelerator
        record = None
        if acc.is_main_process:
            reports = self.validator.reports(self.mode.eval_model(acc.unwrap_model(self.module)))
            for name, report in reports.items():  # one metrics.jsonl line per set
                measures = {key: report[key] for key in ("eer", "min_dcf", "threshold")}
                record = {"step": self.state["step"], "epoch": self.state["epoch"], "set": name, **measures}
                self.tracker.validation(record)
            self._update_best(reports)
        self.collectives.wait_for_main(f"step {self.state['step']}: waiting for rank 0 to validate")
        return record

    def _update_best(self, reports: dict[str, dict[str, Any]]) -> None:
        """best.pt: the model at the lowest `checkpoint.best_metric` so far (`<set>/<metric>`, or
        a metric of the first set)."""
        metric_name = self.cfg.checkpoint.best_metric
        set_name, _, metric = metric_name.rpartition("/")
        report = reports[set_name] if set_name else next(iter(reports.values()))
        value = select_metric(report, metric)  # classifier runs report "native" alone
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
