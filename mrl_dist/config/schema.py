"""The run configuration's schema: one dataclass per YAML section, their defaults, and the
named choices (Literals). Every option is documented in docs/configs.md."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Literal

HeadInit = Literal["pretrained", "pca", "random"]  # models/mrl.py says what each does
HeadType = Literal["linear", "rotation"]  # models/rotation_head.py says why "rotation" exists
HEAD_INITS: tuple[str, ...] = typing.get_args(HeadInit)
HEAD_TYPES: tuple[str, ...] = typing.get_args(HeadType)
ClassInit = Literal["mean", "random"]
ModeName = Literal["mrl", "classifier", "distill"]  # the classes are in train/modes.py
MixedPrecision = Literal["no", "fp16", "bf16"]
OptimizerName = Literal["adamw", "sgd"]
Decay = Literal["cosine", "exponential", "none"]


@dataclass
class PretrainedConfig:
    """Which official ReDimNet weights to start from."""

    train_type: str | None = None  # null: the family's default (ReDimNet ft_lm, ReDimNet2 lm)
    dataset: str | None = None  # null: vox2


@dataclass
class PTMFusionConfig:
    """SSRFNet's pretrained speech model; null keys keep the preset's."""

    source: str | None = None  # a Hugging Face id (microsoft/wavlm-large) or a local folder
    freeze: bool | None = None  # false: the PTM trains (only with student: none)


@dataclass
class FusionConfig:
    """SSRFNet's fusion settings (models/ssrfnet.py); every key null keeps the preset's value."""

    ptm: PTMFusionConfig | None = None
    student: Literal["svmixer", "none"] | None = None  # none: the frozen PTM's states feed the backend
    inject_stages: int | None = None  # the first N stages each take one merged layer group
    group_size: int | None = None  # K layers per group
    proj_kernel: int | None = None  # the PFM's Conv1d kernel
    time_align: Literal["stride2_stem", "interpolate"] | None = None
    distill_layers: list[int] | None = None  # teacher states the student learns to predict
    distill_weight: float | None = None  # weight of that loss beside the speaker loss; 0: off
    backend_checkpoint: str | None = None  # an official ReDimNet file for the backend (interpolate only)


@dataclass
class ModelConfig:
    backbone: str = "b2"  # preset name (b0..b6, ...) or path to an official-format checkpoint
    pretrained: PretrainedConfig | None = field(default_factory=PretrainedConfig)  # null: random init
    mrl_dims: list[int] = field(default_factory=lambda: [64, 128, 192, 256])  # nested prefix sizes
    head_init: HeadInit = "pretrained"
    pca_batches: int = 8  # batches of pooled features used by head_init: pca
    # linear: a BatchNorm + Linear trained freely (with loss.class_init: mean it beat its start and
    # the native embedding at every dim on three corpora, docs/benchmarks.md); rotation: prefixes
    # up to the native dim are the native embedding under a trained rotation, so the native-size
    # prefix scores exactly like native whatever training does (models/rotation_head.py).
    head_type: HeadType = "linear"
    # rotation head: train the dims beyond the native ones (else zero: the largest prefix scores
    # like the native embedding). Off by default: trained on the backbone's own speakers they add
    # noise on unseen ones (docs/benchmarks.md); worth trying on speakers the backbone never saw.
    train_extra_dims: bool = False
    fusion: FusionConfig | None = None  # SSRFNet backbones only (model.backbone: ssrfnet, ssrfnet-tiny)


@dataclass
class NoiseSnrConfig:
    """[low, high] SNR range in dB per MUSAN category."""

    noise: list[float] = field(default_factory=lambda: [0.0, 15.0])
    speech: list[float] = field(default_factory=lambda: [13.0, 20.0])
    music: list[float] = field(default_factory=lambda: [5.0, 15.0])


@dataclass
class NoiseCountConfig:
    """[low, high] clips mixed at once per MUSAN category (babble: several speakers)."""

    noise: list[int] = field(default_factory=lambda: [1, 1])
    speech: list[int] = field(default_factory=lambda: [3, 7])
    music: list[int] = field(default_factory=lambda: [1, 1])


@dataclass
class AugmentConfig:
    """Training-time augmentation (data/augment.py): speed -> crop -> reverb -> noise."""

    noise_dir: str | None = None  # MUSAN layout (noise/, speech/, music/), one folder, or noise shards
    noise_snr: NoiseSnrConfig = field(default_factory=NoiseSnrConfig)
    noise_count: NoiseCountConfig = field(default_factory=NoiseCountConfig)
    rir_dir: str | None = None
    reverb_prob: float = 0.0
    noise_prob: float = 0.0
    speed_perturb: bool = False

    @property
    def active(self) -> bool:
        """Whether any stage changes the waveform (noise, reverberation, speed)."""
        return self.noise_prob > 0 or self.reverb_prob > 0 or self.speed_perturb


@dataclass
class DataConfig:
    train: str = "shards/train.manifest.json"
    val: str = "shards/val.manifest.json"  # manifest of the validation shards and their trials file
    crop_seconds: float = 2.0
    num_workers: int = 8
    shuffle_buffer: int = 1000
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # A folder written by launch/cache_features.py: the head trains from the trunk's cached pooled
    # features (no audio, no trunk). "auto": the run builds that cache itself first, in
    # RUN/features (resumable), from feature_crops_per_utterance crops of every training utterance.
    # Frozen-trunk mrl runs only; null: train from data.train's audio.
    features: str | None = None
    feature_crops_per_utterance: int = 4  # K seeded crops per utterance when features is "auto"
    # Batches from cached features hold this many crops of each speaker (batch_size / this
    # speakers): same-speaker pairs in every batch. 1: crops drawn without regard to speaker.
    crops_per_speaker: int = 1


@dataclass
class OptimizerConfig:
    name: OptimizerName = "adamw"
    lr: float = 0.001
    weight_decay: float = 0.0001
    momentum: float = 0.9  # sgd only
    backbone_lr_ratio: float = 0.1  # a pretrained trunk, once unfrozen, trains at lr x this


@dataclass
class ScheduleConfig:
    warmup_steps: int = 1000
    decay: Decay = "cosine"
    min_lr_ratio: float = 0.01  # floor of lr / peak lr
    gamma: float | None = None  # exponential decay factor; null: reach min_lr_ratio at max_steps


@dataclass
class TrainingConfig:
    mode: ModeName = "mrl"
    freeze_backbone: bool = True
    unfreeze_after_steps: int | None = None  # null: stay frozen for the whole run
    batch_size: int = 128  # per device
    grad_accum: int = 1
    max_steps: int = 60000
    steps_per_epoch: int = 2000
    mixed_precision: MixedPrecision = "bf16"
    grad_clip: float | None = 5.0  # max grad norm; null: no clipping
    max_bad_steps: int = 20  # NaN/inf steps in a row before stopping
    # Keep the running statistics of the trunk's BatchNorm layers (front-end, backbone, pooling)
    # fixed while the trunk trains: the usual choice when fine-tuning a pretrained backbone on
    # small per-device batches. The head's BatchNorm still updates. See docs/configs.md.
    freeze_bn_stats: bool = False
    # How long a per-step collective (the all-reduce every step) may wait for the slowest rank
    # before the run fails with an error naming the rank and what it was doing.
    collective_timeout_minutes: float = 10.0
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)


@dataclass
class LossConfig:
    margin: float = 0.2
    scale: float = 30.0
    subcenters: int = 1
    dim_weights: list[float] | None = None  # one per model.mrl_dims; null: equal weights
    tied: bool = True  # one classifier weight matrix whose prefixes serve every dim
    # Class weights at the start: "mean" = each speaker's mean embedding under the initial head
    # (pretrained starts; the head starts where the loss is already low instead of being pulled
    # towards random directions), "random" = Xavier. Means come from every cached crop
    # (data.features) or from `class_init_batches` batches of the audio stream.
    class_init: ClassInit = "mean"
    class_init_batches: int = 64
    # Margin warm-up for training from scratch: 0 until margin_warmup_start, then linear up to
    # `margin` over margin_warmup_steps optimizer steps. 0 steps: the full margin from step 0.
    margin_warmup_start: int = 0
    margin_warmup_steps: int = 0


@dataclass
class ValidationConfig:
    every_steps: int = 2000
    max_seconds: float | None = None  # crop validation utterances to this; null: full length
    batch_size: int = 16
    # Validate the initial model too (pretrained starts only): best.pt then never ends up
    # worse than the pretrained / PCA-initialised embedding it started from.
    at_start: bool = True
    # How long the other ranks wait for rank 0 to validate (or to initialise the PCA head).
    timeout_minutes: float = 180.0


@dataclass
class CheckpointConfig:
    every_steps: int = 2000
    keep_last: int = 3
    best_metric: str = "mean_eer"  # mean_eer | eer@<dim>, lower is better


@dataclass
class LoggingConfig:
    every_steps: int = 50
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "mrl-dist"


@dataclass
class TeacherConfig:
    source: str  # preset name or checkpoint path
    dims: list[int]  # student dims (from model.mrl_dims) this teacher supervises
    train_type: str | None = None  # null: the family's default (ReDimNet ft_lm, ReDimNet2 lm)
    dataset: str | None = None  # null: vox2
    weight: float = 1.0


@dataclass
class DistillLossesConfig:
    embedding: float = 1.0
    similarity: float = 1.0
    aam: float = 0.5


@dataclass
class DistillConfig:
    teachers: list[TeacherConfig] = field(default_factory=list)
    losses: DistillLossesConfig = field(default_factory=DistillLossesConfig)
    cache_teacher_embeddings: bool = False


@dataclass
class Config:
    run_dir: str = "runs/a100-b2-mrl"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
