"""Typed run configuration: YAML -> nested dataclasses, with ``--set key=value`` overrides.

* `schema`  - the dataclasses (one per YAML section), their defaults and named choices
* `convert` - the generic converter driven by their type hints, `ConfigError`, overrides
* `rules`   - value and cross-field checks (`validate`)
* `files`   - `load_config` (file + overrides -> validated Config), `save_config`

Keys left out take the schema's defaults; every problem is a `ConfigError` naming the file (or
override) and the dotted key. The package needs PyYAML, not torch.
"""

from .convert import ConfigError, apply_overrides
from .files import config_from_dict, config_to_dict, load_config, save_config
from .rules import validate
from .schema import (
    HEAD_INITS,
    HEAD_TYPES,
    AdapterConfig,
    AugmentConfig,
    CheckpointConfig,
    ClassInit,
    Config,
    DataConfig,
    Decay,
    DistillConfig,
    DistillLossesConfig,
    FusionConfig,
    HeadInit,
    HeadType,
    LoggingConfig,
    LossConfig,
    MixedPrecision,
    ModelConfig,
    ModeName,
    NoiseSnrConfig,
    OptimizerConfig,
    OptimizerName,
    PretrainedConfig,
    PTMFusionConfig,
    ScheduleConfig,
    TeacherConfig,
    TrainCorpusConfig,
    TrainingConfig,
    ValidationConfig,
    ValidationSetConfig,
)

__all__ = [
    "HEAD_INITS",
    "HEAD_TYPES",
    "AdapterConfig",
    "AugmentConfig",
    "CheckpointConfig",
    "ClassInit",
    "Config",
    "ConfigError",
    "DataConfig",
    "Decay",
    "DistillConfig",
    "DistillLossesConfig",
    "FusionConfig",
    "HeadInit",
    "HeadType",
    "LoggingConfig",
    "LossConfig",
    "MixedPrecision",
    "ModeName",
    "ModelConfig",
    "NoiseSnrConfig",
    "OptimizerConfig",
    "OptimizerName",
    "PTMFusionConfig",
    "PretrainedConfig",
    "ScheduleConfig",
    "TeacherConfig",
    "TrainCorpusConfig",
    "TrainingConfig",
    "ValidationConfig",
    "ValidationSetConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "save_config",
    "validate",
]
