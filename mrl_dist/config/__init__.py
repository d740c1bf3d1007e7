"""Typed run configuration: YAML -> nested dataclasses, with ``--set key=value`` overrides.

* `schema`  - the dataclasses (one per YAML section), their defaults and named choices
* `convert` - the generic converter driven by their type hints, `ConfigError`, overrides
* `rules`   - value and cross-field checks (`validate`)
* `files`   - `load_config` (file + overrides -> validated Config), `save_config`

Keys left out take the schema's defaults; every problem is a `ConfigError` naming the file (or
override) and the dotted key.
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "PretrainedConfig": "schema",
    "ModelConfig": "schema",
    "FusionConfig": "schema",
    "PTMFusionConfig": "schema",
    "NoiseSnrConfig": "schema",
    "AugmentConfig": "schema",
    "DataConfig": "schema",
    "OptimizerConfig": "schema",
    "ScheduleConfig": "schema",
    "TrainingConfig": "schema",
    "LossConfig": "schema",
    "ValidationConfig": "schema",
    "CheckpointConfig": "schema",
    "LoggingConfig": "schema",
    "TeacherConfig": "schema",
    "DistillLossesConfig": "schema",
    "DistillConfig": "schema",
    "Config": "schema",
    "HeadInit": "schema",
    "HeadType": "schema",
    "HEAD_INITS": "schema",
    "HEAD_TYPES": "schema",
    "ClassInit": "schema",
    "ModeName": "schema",
    "MixedPrecision": "schema",
    "OptimizerName": "schema",
    "Decay": "schema",
    "ConfigError": "convert",
    "apply_overrides": "convert",
    "validate": "rules",
    "config_from_dict": "files",
    "load_config": "files",
    "save_config": "files",
    "config_to_dict": "files",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
