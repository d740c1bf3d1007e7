"""Specification of the typed run config (mrl_dist.config)."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from mrl_dist.config import (
    Config,
    ConfigError,
    TeacherConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)
from mrl_dist.models.loading import default_weights

FULL_YAML = """\
run_dir: runs/h100-b2-mrl
seed: 3
model:
  backbone: b2
  pretrained: {train_type: ft_lm, dataset: vox2}
  mrl_dims: [32, 64, 128, 256]
  head_init: pca
  pca_batches: 4
data:
  train: shards/train.manifest.json
  val: shards/val.manifest.json
  crop_seconds: 3
  num_workers: 4
  shuffle_buffer: 500
  augment:
    noise_dir: /data/musan
    noise_snr: {noise: [0, 15], speech: [13, 20], music: [5, 15]}
    rir_dir: /data/rirs
    reverb_prob: 0.3
    noise_prob: 0.6
    speed_perturb: true
training:
  mode: distill
  freeze_backbone: true
  unfreeze_after_steps: 5000
  batch_size: 96
  grad_accum: 2
  max_steps: 20000
  steps_per_epoch: 1000
  mixed_precision: fp16
  grad_clip: null
  max_bad_steps: 10
  optimizer: {name: sgd, lr: 0.1, weight_decay: 0.0005, momentum: 0.9}
  schedule: {warmup_steps: 500, decay: exponential, min_lr_ratio: 0.001, gamma: 0.9999}
loss: {margin: 0.3, scale: 32, subcenters: 3, dim_weights: [1, 1, 1, 2], tied: false}
validation: {every_steps: 1000, max_seconds: 6.0, batch_size: 8}
checkpoint: {every_steps: 1000, keep_last: 5, best_metric: eer@128}
logging: {every_steps: 10, tensorboard: false, wandb: true, wandb_project: mrl-test}
distill:
  teachers:
    - {source: b0, train_type: ft_lm, dataset: vox2, dims: [32], weight: 1.0}
    - {source: b5, dims: [128, 256], weight: 0.5}
  losses: {embedding: 1.0, similarity: 2.0, aam: 0.5}
  cache_teacher_embeddings: true
"""


def _write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _error(tmp_path, text, overrides=()):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value), str(path)


# --- loading ---


def test_full_yaml_loads_into_nested_dataclasses(tmp_path):
    cfg = load_config(_write(tmp_path, FULL_YAML))
    assert cfg.run_dir == "runs/h100-b2-mrl" and cfg.seed == 3
    assert cfg.model.mrl_dims == [32, 64, 128, 256] and cfg.model.head_init == "pca"
    assert cfg.data.augment.noise_snr.speech == [13.0, 20.0]
    assert cfg.training.optimizer.name == "sgd" and cfg.training.schedule.gamma == 0.9999
    assert cfg.training.grad_clip is None
    assert cfg.loss.dim_weights == [1.0, 1.0, 1.0, 2.0]
    assert cfg.distill.teachers[1] == TeacherConfig(source="b5", dims=[128, 256], weight=0.5)


def test_omitted_keys_take_the_documented_defaults(tmp_path):
    cfg = load_config(_write(tmp_path, "training: {batch_size: 64}\n"))
    assert cfg.training.batch_size == 64
    assert cfg.training.max_steps == 60000 and cfg.training.mixed_precision == "bf16"
    assert cfg.model.mrl_dims == [64, 128, 192, 256]
    # null weights: the family's defaults, for ReDimNet b2 ft_lm on vox2
    pretrained = cfg.model.pretrained
    assert default_weights(cfg.model.backbone, pretrained.train_type, pretrained.dataset) == ("ft_lm", "vox2")
    assert cfg.checkpoint.best_metric == "mean_eer"
    assert cfg.distill.teachers == []


def test_empty_file_gives_the_default_config(tmp_path):
    assert load_config(_write(tmp_path, "")) == Config()


def test_int_is_accepted_for_a_float_field(tmp_path):
    cfg = load_config(_write(tmp_path, "loss: {scale: 32}\n"))
    assert cfg.loss.scale == 32.0 and isinstance(cfg.loss.scale, float)


def test_exponent_floats_without_a_dot_load_as_floats(tmp_path):
    # Plain YAML 1.1 reads `1e-4` as the string '1e-4'; a learning rate must not.
    cfg = load_config(_write(tmp_path, "training: {optimizer: {lr: 1e-4}}\n"), ["loss.scale=3E+1"])
    assert cfg.training.optimizer.lr == pytest.approx(1e-4) and cfg.loss.scale == 30.0


def test_optional_fields_accept_null(tmp_path):
    cfg = load_config(
        _write(tmp_path, "model: {pretrained: null, head_init: random}\nvalidation: {max_seconds: null}\n")
    )
    assert cfg.model.pretrained is None and cfg.validation.max_seconds is None


def test_missing_file_error_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


# --- key and type errors ---


def test_unknown_key_names_file_and_dotted_key_and_suggests_the_close_match(tmp_path):
    message, path = _error(tmp_path, "training: {batch_sise: 64}\n")
    assert message == f"{path}: training.batch_sise: unknown key (did you mean training.batch_size?)"


def test_unknown_key_without_close_match_lists_valid_keys(tmp_path):
    message, _ = _error(tmp_path, "loss: {zzz: 1}\n")
    assert (
        "loss.zzz: unknown key (valid keys here: margin, scale, subcenters, dim_weights, tied, sampled_classes, "
        "class_init, class_init_batches, margin_warmup_start, margin_warmup_steps, head_anchor)"
    ) in message


def test_ill_typed_value_names_key_expected_type_and_value(tmp_path):
    message, path = _error(tmp_path, "training: {batch_size: abc}\n")
    assert message == f"{path}: training.batch_size: expected int, got str 'abc'"


def test_bool_is_not_accepted_as_int(tmp_path):
    message, _ = _error(tmp_path, "training: {batch_size: true}\n")
    assert "training.batch_size: expected int, got bool True" in message


def test_list_item_type_error_names_the_index(tmp_path):
    message, _ = _error(tmp_path, "model: {mrl_dims: [64, x]}\n")
    assert "model.mrl_dims[1]: expected int, got str 'x'" in message


def test_section_given_a_scalar_is_an_error(tmp_path):
    message, _ = _error(tmp_path, "training: 5\n")
    assert "training: expected a mapping, got int 5" in message


# --- overrides ---


def test_overrides_parse_values_as_yaml():
    result = apply_overrides(
        {"training": {"batch_size": 128}},
        [
            "training.batch_size=64",
            "model.mrl_dims=[32,64,128]",
            "model.pretrained=null",
            "training.freeze_backbone=false",
            "training.optimizer.lr=3e-4",
            "loss.margin=0.25",
        ],
    )
    assert result["training"]["batch_size"] == 64
    assert result["model"]["mrl_dims"] == [32, 64, 128]
    assert result["model"]["pretrained"] is None
    assert result["training"]["freeze_backbone"] is False
    assert result["training"]["optimizer"]["lr"] == pytest.approx(3e-4)
    assert result["loss"]["margin"] == 0.25


def test_overrides_do_not_modify_the_input_dict():
    original = {"training": {"batch_size": 128}}
    apply_overrides(original, ["training.batch_size=64"])
    assert original == {"training": {"batch_size": 128}}


def test_override_can_set_a_whole_list_of_teachers(tmp_path):
    cfg = load_config(
        _write(tmp_path, ""),
        ["training.mode=distill", "distill.teachers=[{source: b0, dims: [64]}]"],
    )
    assert cfg.distill.teachers == [TeacherConfig(source="b0", dims=[64])]


def test_override_applies_on_top_of_the_file(tmp_path):
    cfg = load_config(_write(tmp_path, FULL_YAML), ["training.batch_size=32", "model.pretrained.dataset=vox1"])
    assert cfg.training.batch_size == 32 and cfg.training.grad_accum == 2
    assert cfg.model.pretrained.dataset == "vox1"


def test_unknown_override_key_is_an_error_with_suggestion():
    with pytest.raises(
        ConfigError,
        match=r"--set training\.batch_sise=1: training\.batch_sise: unknown key "
        r"\(did you mean training\.batch_size\?\)",
    ):
        apply_overrides({}, ["training.batch_sise=1"])


def test_override_into_a_value_is_an_error():
    with pytest.raises(ConfigError, match="training.batch_size is a value, not a section"):
        apply_overrides({}, ["training.batch_size.x=1"])


@pytest.mark.parametrize(
    "item, message", [("training.batch_size", "expected key=value"), ("training.batch_size=", "empty value")]
)
def test_malformed_override_is_an_error(item, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides({}, [item])


def test_ill_typed_override_error_names_the_override(tmp_path):
    message, path = _error(tmp_path, "", ["training.batch_size=abc"])
    assert message == f"{path} --set training.batch_size=abc: training.batch_size: expected int, got str 'abc'"


# --- save / load round trip ---


def test_saved_config_loads_back_equal(tmp_path):
    cfg = load_config(_write(tmp_path, FULL_YAML), ["training.optimizer.lr=1e-5"])
    save_config(cfg, tmp_path / "out" / "config.yaml")
    assert load_config(tmp_path / "out" / "config.yaml") == cfg


def test_config_to_dict_is_plain_yaml_data():
    data = config_to_dict(Config())
    assert data["training"]["optimizer"]["name"] == "adamw"
    assert config_from_dict(yaml.safe_load(yaml.safe_dump(data))) == Config()


# --- value validation ---


@pytest.mark.parametrize(
    "key, value",
    [
        ("model.head_init", "zeros"),
        ("training.mode", "mrl2"),
        ("training.mixed_precision", "fp8"),
        ("training.optimizer.name", "adam"),
        ("training.schedule.decay", "linear"),
    ],
)
def test_enum_fields_reject_unknown_choices(key, value):
    with pytest.raises(ConfigError, match=rf"^{key}: must be one of .* got '{value}'"):
        config_from_dict(apply_overrides({}, [f"{key}={value}"]))


@pytest.mark.parametrize("dims", ["[128, 64]", "[64, 64]", "[0, 64]", "[]"])
def test_mrl_dims_must_be_strictly_increasing_positive(dims):
    with pytest.raises(ConfigError, match="^model.mrl_dims: must"):
        config_from_dict(apply_overrides({}, [f"model.mrl_dims={dims}"]))


def test_dim_weights_need_one_weight_per_mrl_dim():
    with pytest.raises(ConfigError, match=r"^loss.dim_weights: has 3 weights but model.mrl_dims has 4 dims"):
        config_from_dict({"loss": {"dim_weights": [1, 1, 1]}})


@pytest.mark.parametrize("metric", ["eer", "eer@", "eer@abc", "min_eer", "eer@96"])
def test_best_metric_must_be_mean_eer_or_eer_at_a_trained_dim(metric):
    with pytest.raises(ConfigError, match="^checkpoint.best_metric: "):
        config_from_dict({"checkpoint": {"best_metric": metric}})


def test_best_metric_accepts_eer_at_a_trained_dim():
    assert config_from_dict({"checkpoint": {"best_metric": "eer@192"}}).checkpoint.best_metric == "eer@192"


@pytest.mark.parametrize(
    "teachers, message",
    [
        (
            [{"source": "b0", "dims": [64]}, {"source": "b5", "dims": [96]}],
            r"distill.teachers\[1\].dims: \[96\] not in",
        ),
        ([{"source": "b0", "dims": [128, 64]}], r"distill.teachers\[0\].dims: must be strictly increasing"),
        ([{"source": "b0"}], r"distill.teachers\[0\].dims: missing required key"),
        (
            [{"source": "b0", "dims": [64], "wieght": 2}],
            r"distill.teachers\[0\].wieght: unknown key "
            r"\(did you mean distill.teachers\[0\].weight\?\)",
        ),
        ([{"source": "b0", "dims": [64], "weight": -1}], r"distill.teachers\[0\].weight: must be >= 0"),
        (["b0"], r"distill.teachers\[0\]: expected a mapping"),
    ],
)
def test_teacher_errors_name_the_teacher_index(teachers, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"distill": {"teachers": teachers}})


def test_distill_mode_needs_a_teacher():
    with pytest.raises(ConfigError, match="training.mode: is 'distill' but distill.teachers is empty"):
        config_from_dict({"training": {"mode": "distill"}})


@pytest.mark.parametrize(
    "override, key",
    [
        ("training.batch_size=0", "training.batch_size"),
        ("training.optimizer.lr=-1", "training.optimizer.lr"),
        ("data.num_workers=-1", "data.num_workers"),
        ("data.augment.reverb_prob=1.5", "data.augment.reverb_prob"),
    ],
)
def test_out_of_range_numbers_are_errors_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=f"^{key}: must"):
        config_from_dict(apply_overrides({}, [override]))


def test_augmentation_probability_needs_its_folder():
    with pytest.raises(ConfigError, match="data.augment.noise_prob: is > 0 but data.augment.noise_dir is null"):
        config_from_dict({"data": {"augment": {"noise_prob": 0.5}}})


def test_unfreeze_after_steps_needs_a_frozen_backbone():
    with pytest.raises(ConfigError, match="training.unfreeze_after_steps"):
        config_from_dict({"training": {"freeze_backbone": False, "unfreeze_after_steps": 10}})


def test_validation_error_from_file_names_the_file(tmp_path):
    message, path = _error(tmp_path, "loss: {dim_weights: [1, 2]}\n")
    assert message.startswith(f"{path}: loss.dim_weights: has 2 weights")
