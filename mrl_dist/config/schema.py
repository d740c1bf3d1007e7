"""The run configuration's schema: one dataclass per YAML section, their defaults, and the
named choices (Literals). Every key carries its one-line description (`option(help=...)`);
`python -m mrl_dist.config.reference --write docs/configs.md` renders them into the docs' table
of every key, and tests/test_config_reference.py fails when one is missing or the docs are stale."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

HELP = "help"  # the field-metadata key that holds a key's description


def option(default: Any = dataclasses.MISSING, *, help: str, factory: Callable[[], Any] | None = None) -> Any:
    """A config key: its default (or `factory` for a mutable one: a list, a section; neither for
    a required key) and its one-line description, with units, for the docs."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={HELP: help})
    return dataclasses.field(default=default, metadata={HELP: help})


HeadInit = Literal["pretrained", "pca", "random"]  # models/mrl.py says what each does
HeadType = Literal["linear", "rotation"]  # models/rotation_head.py says why "rotation" exists
HEAD_INITS: tuple[str, ...] = typing.get_args(HeadInit)
HEAD_TYPES: tuple[str, ...] = typing.get_args(HeadType)
ClassInit = Literal["mean", "random"]
ModeName = Literal["mrl", "classifier", "distill"]  # the classes are in train/modes.py
MixedPrecision = Literal["no", "fp16", "bf16"]
OptimizerName = Literal["adamw", "sgd"]
Decay = Literal["cosine", "exponential", "none"]
AdapterType = Literal["lora"]  # models/adapters.py
AdapterBatchNorm = Literal["frozen", "train"]


@dataclass
class PretrainedConfig:
    """Which official weights (ReDimNet or ReDimNet2) to start from."""

    train_type: str | None = option(
        None,
        help="Training type of the official weights; null: the family's default (ReDimNet `ft_lm`, ReDimNet2 `lm`).",
    )
    dataset: str | None = option(None, help="Dataset the official weights were trained on; null: `vox2`.")


@dataclass
class PTMFusionConfig:
    """SSRFNet's pretrained speech model; null keys keep the preset's."""

    source: str | None = option(
        None,
        help="The pretrained speech model: a Hugging Face id (`microsoft/wavlm-large`, read from `$HF_HOME/hub`) "
        "or a local folder; null: the preset's.",
    )
    freeze: bool | None = option(
        None,
        help="`true`: the PTM never trains; `false` trains it too (only with `student: none`); "
        "null: the preset's (`true`).",
    )


@dataclass
class FusionConfig:
    """SSRFNet's fusion settings (models/ssrfnet.py); every key null keeps the preset's value."""

    ptm: PTMFusionConfig | None = option(None, help="The pretrained speech model (PTM); null: the preset's.")
    student: Literal["svmixer", "none"] | None = option(
        None,
        help="`svmixer`: an SV-Mixer distilled from the PTM feeds the backend (the paper's); "
        "`none`: the frozen PTM's states feed it.",
    )
    inject_stages: int | None = option(
        None, help="The first N backend stages each take one merged group of PTM layers (`ssrfnet`: 4)."
    )
    group_size: int | None = option(None, help="K, PTM layers merged per group (`ssrfnet`: 4).")
    proj_kernel: int | None = option(None, help="Kernel of the PFM's Conv1d projection, odd (`ssrfnet`: 5).")
    time_align: Literal["stride2_stem", "interpolate"] | None = option(
        None,
        help="`stride2_stem`: the paper's 50 Hz backend; `interpolate`: ReDimNet's own stem at 100 Hz, "
        "the PTM's features interpolated (our extension).",
    )
    distill_layers: list[int] | None = option(
        None, help="PTM layers the student learns to predict (`ssrfnet`: 8, 16, 24 of WavLM-Large's 25)."
    )
    distill_weight: float | None = option(
        None, help="Weight of that layer-prediction loss beside the speaker loss (`ssrfnet`: 1.0); 0: off."
    )
    backend_checkpoint: str | None = option(
        None,
        help="With `time_align: interpolate`: an official ReDimNet file (same F, C, stages) that starts the "
        "backend; null: a fresh backend.",
    )


@dataclass
class AdapterConfig:
    """Low-rank adapters (LoRA) on the frozen trunk (models/adapters.py): with `training.mode: mrl`
    they train beside the Matryoshka head; `best.pt` holds them merged, `RUN/adapter.pt` alone."""

    type: AdapterType = option(
        "lora", help="The adapter kind: `lora`, an adapted layer computes `W x + alpha / rank * B A x`."
    )
    rank: int = option(8, help="Rank r of each adapter: A is r x the layer's inputs (x its kernel), B outputs x r.")
    alpha: float = option(16.0, help="Scale of the update, `alpha / rank` (B starts at zero: the base at step 0).")
    dropout: float = option(0.0, help="Dropout on an adapted layer's input to its adapter (training only), in [0, 1).")
    # conv2d + linear: the 2D blocks' convolutions and the 1D blocks' attention and feed-forward
    # layers, a 6.7% (tiny) / 7.6% (b0) / 2.7% (b2) adapter file at rank 8; adding conv1d (the
    # stages' 2D<->1D projections, the 1D pointwise convs, the pooling) makes it 19% of tiny and b0.
    target_modules: list[str] = option(
        factory=lambda: ["conv2d", "linear"],
        help="The layers adapted: module types (`conv1d`, `conv2d`, `linear`) and glob patterns over module "
        "names (`*.red_dim_conv.0`, `pool.linear1`); grouped (depthwise) convolutions are never adapted.",
    )
    stages: list[str] | None = option(
        None,
        help="Trunk parts adapted (`stem`, `stage0`, ..., `mfa`, `pool`: the backbone's parts and the pooling); "
        "null: every part.",
    )
    # frozen: the base's statistics, so the adapted model starts equal to its base and small
    # domain batches cannot shift every layer's normalisation (models/adapters.py has the why).
    batchnorm: AdapterBatchNorm = option(
        "frozen",
        help="The trunk's BatchNorm statistics: `frozen` (the base's running statistics) or `train` (updated "
        "on the new domain's batches and saved in the adapter file; affine weights stay frozen).",
    )


@dataclass
class ModelConfig:
    """The trunk and its Matryoshka head."""

    backbone: str = option(
        "b2",
        help="The trunk: a preset (`b0`..`b6`, `M`, `tiny`, `redimnet2-b0`..`redimnet2-b6`, `ssrfnet`, ...) "
        "or the path of an official-format checkpoint.",
    )
    pretrained: PretrainedConfig | None = option(
        factory=PretrainedConfig,
        help="Official weights of a preset `backbone` (a checkpoint file brings its own); null: random initialisation.",
    )
    mrl_dims: list[int] = option(
        factory=lambda: [64, 128, 192, 256],
        help="The nested embedding sizes trained, strictly increasing; the last is the embedding's size.",
    )
    head_init: HeadInit = option(
        "pretrained",
        help="How the head starts: `pretrained` (the native embedding layer; dims beyond it small and random), "
        "`pca` (the same, rotated so that every prefix is its best linear truncation) or `random`.",
    )
    pca_batches: int = option(8, help="Training batches whose pooled features fit the PCA head (`head_init: pca`).")
    # linear: with loss.class_init: mean it beat its start and the native embedding at every dim
    # on three corpora (docs/benchmarks.md); rotation: the native-size prefix scores exactly like
    # native whatever training does (models/rotation_head.py), the conservative choice.
    head_type: HeadType = option(
        "linear",
        help="`linear`: a BatchNorm + Linear trained freely; `rotation`: the prefixes up to the native size "
        "are the native embedding under a trained rotation.",
    )
    # Off by default: trained on the backbone's own speakers the extra dims add noise on unseen
    # ones (docs/benchmarks.md); worth trying on speakers the backbone never saw.
    train_extra_dims: bool = option(
        False, help="Rotation head: train the dims beyond the native size (else they stay zero)."
    )
    fusion: FusionConfig | None = option(
        None,
        help="SSRFNet's fusion settings (`backbone: ssrfnet` or `ssrfnet-tiny`, `pretrained: null`); "
        "null: the preset's.",
    )
    adapters: AdapterConfig | None = option(
        None,
        help="LoRA adapters on the frozen trunk, trained with the head (`training.mode: mrl`, a pretrained "
        "`backbone`); null: none.",
    )
    head_from: str | None = option(
        None,
        help="Start the Matryoshka head from this MRL checkpoint's head (a run on the same `backbone`: a "
        "head-only stage before adapters, or a run before its large-margin fine-tuning); null: `head_init`.",
    )


@dataclass
class NoiseSnrConfig:
    """[low, high] SNR range in dB per MUSAN category."""

    noise: list[float] = option(factory=lambda: [0.0, 15.0], help="[low, high] SNR of a noise clip, in dB.")
    speech: list[float] = option(factory=lambda: [13.0, 20.0], help="[low, high] SNR of each babble clip, in dB.")
    music: list[float] = option(factory=lambda: [5.0, 15.0], help="[low, high] SNR of a music clip, in dB.")


@dataclass
class NoiseCountConfig:
    """[low, high] clips mixed at once per MUSAN category (babble: several speakers)."""

    noise: list[int] = option(factory=lambda: [1, 1], help="[low, high] noise clips mixed into one crop.")
    speech: list[int] = option(
        factory=lambda: [3, 7], help="[low, high] speech clips mixed into one crop (babble), each at its own SNR."
    )
    music: list[int] = option(factory=lambda: [1, 1], help="[low, high] music clips mixed into one crop.")


@dataclass
class AugmentConfig:
    """Training-time augmentation (data/augment.py): speed -> crop -> reverb -> noise."""

    noise_dir: str | None = option(
        None,
        help="Additive noise: a MUSAN-layout folder (`noise/`, `speech/`, `music/`), a folder of clips "
        "(the one category `noise`) or noise shards; null: none.",
    )
    noise_snr: NoiseSnrConfig = option(factory=NoiseSnrConfig, help="SNR range per MUSAN category, in dB.")
    noise_count: NoiseCountConfig = option(factory=NoiseCountConfig, help="Clips mixed at once per MUSAN category.")
    rir_dir: str | None = option(
        None, help="A folder of room impulse responses (wav/flac/ogg, searched recursively); null: no reverberation."
    )
    reverb_prob: float = option(0.0, help="Probability that a crop is convolved with a random RIR from `rir_dir`.")
    noise_prob: float = option(
        0.0, help="Probability that a crop gets noise from `noise_dir` (its category drawn uniformly)."
    )
    speed_perturb: bool = option(
        False,
        help="Play each utterance at speed 0.9, 1.0 or 1.1 (uniformly); the changed speeds are speaker classes "
        "of their own (3x the classes).",
    )

    @property
    def active(self) -> bool:
        """Whether any stage changes the waveform (noise, reverberation, speed)."""
        return self.noise_prob > 0 or self.reverb_prob > 0 or self.speed_perturb


@dataclass
class TrainCorpusConfig:
    """One corpus of a training mix (`data.train` as a list); data/mix.py draws from them."""

    manifest: str = option(help="The corpus's packed split: a `NAME.manifest.json` (a path or an http(s) URL).")
    weight: float = option(
        1.0, help="Share of the training crops drawn from this corpus, relative to the other entries' weights."
    )
    name: str | None = option(
        None,
        help="Namespace of this corpus's speakers and utterance keys (`NAME/<key>`), unique within the mix; "
        "null: the manifest's file name without `.manifest.json`.",
    )


@dataclass
class DataConfig:
    """Where the shards are and how training crops are drawn from them."""

    train: str | list[TrainCorpusConfig] = option(
        "shards/train.manifest.json",
        help="Training shards: a `NAME.manifest.json` (a path or an http(s) URL; it gives the speaker labels), "
        "shard paths, URLs or `pipe:` commands as a brace pattern (`::` joins several), or a mix of corpora: "
        "a list of `{manifest, weight, name}` (each rank draws from them in proportion to their weights; their "
        "speakers stay apart, the classes are the sum).",
    )
    val: str = option(
        "shards/val.manifest.json",
        help="Validation shards: a manifest that names their trials file (EER per dim is measured on it).",
    )
    crop_seconds: float = option(
        2.0, help="Length of each random training crop, in seconds (shorter utterances are repeated to it)."
    )
    num_workers: int = option(8, help="Data loader worker processes per rank (validation uses at most 2).")
    shuffle_buffer: int = option(1000, help="Utterances each loader worker shuffles among before cropping.")
    augment: AugmentConfig = option(
        factory=AugmentConfig, help="Training-time augmentation; off while every probability is 0 and speed is off."
    )
    # "auto" builds the cache first (resumable) and trains the head from it for as many epochs as
    # the run asks, without audio or trunk: the trunk runs once instead of every step.
    features: str | None = option(
        None,
        help="Train the head from the frozen trunk's cached pooled features: a `launch/cache_features.py` "
        "folder, or `auto` (this run's own, built first in `RUN/features`); null: from `data.train`'s audio.",
    )
    feature_crops_per_utterance: int = option(
        4, help="Seeded crops cached per training utterance when `features` is `auto`."
    )
    crops_per_speaker: int = option(
        1,
        help="With cached features: crops of each speaker per batch (`batch_size / n` speakers); "
        "1: crops drawn regardless of speaker.",
    )


@dataclass
class OptimizerConfig:
    """The optimizer; every parameter is in it from the start, frozen ones too."""

    name: OptimizerName = option("adamw", help="`adamw`, or `sgd` (Nesterov momentum).")
    lr: float = option(0.001, help="Peak learning rate of the head (of everything but a pretrained trunk).")
    weight_decay: float = option(0.0001, help="Weight decay (AdamW: decoupled; SGD: L2).")
    momentum: float = option(0.9, help="SGD momentum (`sgd` only).")
    backbone_lr_ratio: float = option(0.1, help="A pretrained trunk trains at `lr` x this (once unfrozen).")


@dataclass
class ScheduleConfig:
    """The learning rate over the run: linear warm-up, then decay to a floor."""

    warmup_steps: int = option(1000, help="Optimizer steps of linear warm-up to the peak `lr`; 0: none.")
    decay: Decay = option(
        "cosine",
        help="After the warm-up: `cosine` (down to the floor at `training.max_steps`), `exponential` "
        "(by `gamma`, never below the floor) or `none` (constant).",
    )
    min_lr_ratio: float = option(0.01, help="Floor of the learning rate, as a fraction of the peak.")
    gamma: float | None = option(
        None, help="Exponential decay factor per optimizer step; null: the one that reaches the floor at `max_steps`."
    )


@dataclass
class TrainingConfig:
    """What trains, for how long, on how many crops per step."""

    mode: ModeName = option(
        "mrl",
        help="`mrl`: a Matryoshka head on a ReDimNet trunk; `classifier`: a plain ReDimNet + AAM on its "
        "native embedding; `distill`: an MRL student taught by `distill.teachers`.",
    )
    freeze_backbone: bool = option(
        True, help="Keep the trunk frozen (no gradients, eval mode): only the head trains (`mrl` and `distill` modes)."
    )
    unfreeze_after_steps: int | None = option(
        None, help="Optimizer step at which the frozen trunk starts training; null: frozen for the whole run."
    )
    batch_size: int = option(128, help="Crops per micro-batch on each device (process).")
    grad_accum: int = option(
        1, help="Micro-batches per optimizer step; crops per step = `batch_size` x `grad_accum` x processes."
    )
    max_steps: int = option(60000, help="Length of the run, in optimizer steps.")
    steps_per_epoch: int = option(
        2000, help="Optimizer steps per loader epoch; each epoch reseeds every rank's endless shard stream."
    )
    mixed_precision: MixedPrecision = option(
        "bf16", help='Autocast precision: `"no"` (quoted in YAML), `fp16` (CUDA only) or `bf16`.'
    )
    grad_clip: float | None = option(5.0, help="Maximum gradient norm; null: no clipping.")
    max_bad_steps: int = option(
        20,
        help="Optimizer steps in a row with a non-finite loss or gradient (each skipped; under DeepSpeed only "
        "counted) before the run stops.",
    )
    # The usual choice when fine-tuning a pretrained backbone on small per-device batches, whose
    # statistics are noisier than the pretrained ones (docs/configs.md, "Train/eval policy").
    freeze_bn_stats: bool = option(
        False,
        help="Keep the running statistics of the trunk's BatchNorm layers fixed while it trains "
        "(the head's still update).",
    )
    collective_timeout_minutes: float = option(
        10.0,
        help="Minutes a per-step collective waits for the slowest rank before the run fails, naming the rank.",
    )
    # Off by default: on the CPU measured the compiled step was slower (0.6-0.7x) after a first
    # step of 1-3 minutes' compilation (docs/benchmarks.md, "Compiled training step"); a GPU may differ.
    compile: bool = option(
        False,
        help="Run the training step's forward (trunk, head, loss) through `torch.compile` (static shapes; "
        "the first step compiles); keep the launcher's `--dynamo_backend no`.",
    )
    optimizer: OptimizerConfig = option(factory=OptimizerConfig, help="The optimizer.")
    schedule: ScheduleConfig = option(factory=ScheduleConfig, help="The learning-rate schedule.")


@dataclass
class LossConfig:
    """The Matryoshka AAM-softmax over the speakers of `data.train`."""

    margin: float = option(0.2, help="Additive angular margin of the AAM-softmax, in radians.")
    scale: float = option(30.0, help="Scale of the AAM-softmax's cosine logits.")
    subcenters: int = option(1, help="Sub-centres per speaker class (each class scores its best one); 1: plain AAM.")
    dim_weights: list[float] | None = option(
        None, help="Loss weight of each `model.mrl_dims` prefix; null: equal weights."
    )
    tied: bool = option(
        True, help="One class matrix whose column prefixes serve every dim; `false`: one matrix per dim."
    )
    # For 100k+ speakers: the logits [batch, classes] per dim dominate the head's step there
    # (docs/configs.md, "Many speakers: 100k+ classes", has the numbers and the accuracy cost).
    sampled_classes: int | None = option(
        None,
        help="Score each step's crops against their own classes plus random others, this many classes in "
        "all (>= `training.batch_size`; partial-FC style), not every class; null: every class.",
    )
    # "mean": the head starts where the loss is already low instead of being pulled towards random
    # directions per speaker (train/class_init.py has the numbers).
    class_init: ClassInit = option(
        "mean",
        help="AAM class weights at the start: `mean` (each speaker's mean embedding under the initial head, or "
        "in `classifier` mode the backbone's embedding; pretrained starts only) or `random` (Xavier).",
    )
    class_init_batches: int = option(
        64, help="Batches of the audio stream averaged for `class_init: mean` when there is no feature cache."
    )
    # Margin warm-up for training from scratch, where a full margin on random embeddings slows the start.
    margin_warmup_start: int = option(
        0, help="Optimizer step until which the margin is 0 (with `margin_warmup_steps` > 0)."
    )
    margin_warmup_steps: int = option(
        0, help="Optimizer steps over which the margin then rises linearly to `margin`; 0: the full margin throughout."
    )
    # In-domain (the head trains on the speakers the trunk already separates) the head learns
    # nothing new about unseen speakers and drifts worse the longer it trains: the pull keeps it
    # near its start (docs/benchmarks.md, "MRL on real speech").
    head_anchor: float = option(
        0.0,
        help="Pull of a Matryoshka head towards its initial weights (L2-SP): adds `head_anchor x |W - W0|^2 / "
        "|W0|^2` over the head's parameters to the loss; 0: none.",
    )


@dataclass
class ValidationSetConfig:
    """One named validation set of `validation.sets`."""

    name: str = option(help="The set's name: its lines in `metrics.jsonl` and `checkpoint.best_metric` use it.")
    manifest: str = option(help="Its packed split, a `NAME.manifest.json`.")
    trials: str | None = option(None, help="Its VoxCeleb-format trial list; null: the one the manifest names.")


@dataclass
class ValidationConfig:
    """EER per dim on `data.val`'s trials (or on each of `sets`), on rank 0; the best model so far is `best.pt`."""

    sets: list[ValidationSetConfig] = option(
        factory=list,
        help="Named validation sets, each scored per dim into `metrics.jsonl` (one line per set); "
        "empty: `data.val` alone, named `val`.",
    )

    every_steps: int = option(2000, help="Validate every N optimizer steps, and after the last.")
    max_seconds: float | None = option(
        None, help="Cut validation utterances to this many seconds (changes the protocol); null: full length."
    )
    batch_size: int = option(16, help="Validation utterances per batch, padded to the longest.")
    at_start: bool = option(
        True,
        help="Validate the initial model too (pretrained starts), so that `best.pt` is never worse than the start.",
    )
    timeout_minutes: float = option(
        180.0, help="Minutes the other ranks wait for rank 0 to validate (or to fit the PCA head)."
    )


@dataclass
class CheckpointConfig:
    """Resumable training checkpoints (`RUN/checkpoints/step-N`) and the exported `best.pt`, `last.pt`."""

    every_steps: int = option(
        2000, help="Save a resumable checkpoint and `last.pt` every N optimizer steps, and after the last."
    )
    keep_last: int = option(3, help="Newest `checkpoints/step-N` folders kept; older ones are deleted.")
    best_metric: str = option(
        "mean_eer",
        help="Validation metric that picks `best.pt`, lower is better: `mean_eer` (over the dims) or `eer@<dim>`, "
        "of the first validation set, or of a named one as `<set>/mean_eer`, `<set>/eer@<dim>`.",
    )


@dataclass
class LoggingConfig:
    """Rank 0's progress reports: `RUN/train.log`, `RUN/metrics.jsonl`, TensorBoard, wandb."""

    every_steps: int = option(
        50, help="Optimizer steps between progress lines (their averages) to `train.log`, TensorBoard and wandb."
    )
    tensorboard: bool = option(True, help="Write TensorBoard scalars to `RUN/tensorboard` (extra `tensorboard`).")
    wandb: bool = option(
        False, help="Log to Weights & Biases (extra `wandb`); a resumed run continues the same wandb run."
    )
    wandb_project: str = option("mrl-dist", help="The wandb project the run is logged to.")


@dataclass
class TeacherConfig:
    """One frozen teacher of distillation and the student prefixes it supervises."""

    source: str = option(help="The teacher: a preset name with official weights, or a checkpoint path.")
    dims: list[int] = option(help="The student's prefix sizes (from `model.mrl_dims`) this teacher supervises.")
    train_type: str | None = option(
        None,
        help="Training type of its official weights; null: the family's default (ReDimNet `ft_lm`, ReDimNet2 `lm`).",
    )
    dataset: str | None = option(None, help="Dataset its official weights were trained on; null: `vox2`.")
    weight: float = option(1.0, help="Weight of this teacher's terms in the embedding and similarity losses.")


@dataclass
class DistillLossesConfig:
    """Weights of the distillation terms (train/distill.py); a term weighted 0 is not computed."""

    embedding: float = option(
        1.0, help="Weight of `1 - cos(adapter(student prefix), teacher embedding)`; 0: off (no adapters)."
    )
    similarity: float = option(
        1.0, help="Weight of the MSE between the batch's cosine matrices of student prefix and teacher; 0: off."
    )
    aam: float = option(0.5, help="Weight of the Matryoshka AAM loss on speaker labels; 0: off (no labels needed).")


@dataclass
class DistillConfig:
    """Distillation from frozen teachers into the MRL student (`training.mode: distill`)."""

    teachers: list[TeacherConfig] = option(
        factory=list, help="The teachers, each supervising some of the student's prefixes."
    )
    losses: DistillLossesConfig = option(factory=DistillLossesConfig, help="Weights of the distillation terms.")
    cache_teacher_embeddings: bool = option(
        False,
        help="Cut each utterance at a fixed place and cache the teachers' embeddings in `teacher-cache/` beside "
        "`data.train`'s manifest (augmentation off).",
    )


@dataclass
class Config:
    """A whole run: the YAML file's top level."""

    run_dir: str = option(
        "runs/a100-b2-mrl",
        help="The run folder: `config.yaml`, `train.log`, `metrics.jsonl`, `checkpoints/`, `best.pt`, `last.pt`.",
    )
    seed: int = option(0, help="Seed of the initial weights and of every data stream (with epoch, rank and worker).")
    model: ModelConfig = option(factory=ModelConfig, help="The trunk and its Matryoshka head.")
    data: DataConfig = option(factory=DataConfig, help="Training and validation data.")
    training: TrainingConfig = option(factory=TrainingConfig, help="The training loop and its optimisation.")
    loss: LossConfig = option(factory=LossConfig, help="The Matryoshka AAM-softmax.")
    validation: ValidationConfig = option(factory=ValidationConfig, help="Validation during training.")
    checkpoint: CheckpointConfig = option(factory=CheckpointConfig, help="Checkpoints and `best.pt`.")
    logging: LoggingConfig = option(factory=LoggingConfig, help="Progress logging.")
    distill: DistillConfig = option(factory=DistillConfig, help="Distillation (`training.mode: distill`).")
