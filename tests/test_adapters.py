"""LoRA adapters on the frozen trunk (models/adapters.py, models/adapter_files.py): an adapted model
starts as its base, merges into equal plain weights, saves the adapter alone and refuses another
base; in `mrl` mode only the factors and the head train, and a run writes `adapter.pt` beside a
`best.pt` that loads like any MRL checkpoint.

Models are the `tiny` preset (and b0 for the file-size budget) with random weights and random
BatchNorm statistics, written as official-format files as a user's backbone would be.
"""

import copy
import json
import os

import pytest
import torch
from accelerate.state import AcceleratorState

from mrl_dist.config import AdapterConfig, ConfigError, config_from_dict
from mrl_dist.demo.run import prepare_demo_shards
from mrl_dist.eval.cli import evaluate_main
from mrl_dist.models import ReDimNetMRL, build_preset, inference_form, load_pretrained, save_official_checkpoint
from mrl_dist.models.adapter_files import adapter_path_for, load_adapter, save_adapter
from mrl_dist.models.adapters import (
    AdapterError,
    LoRAConv1d,
    LoRAConv2d,
    LoRALinear,
    apply_adapters,
    has_adapters,
    merge_adapters,
    remove_adapters,
    select_layers,
    trunk_fingerprint_of,
)
from mrl_dist.tools.bench_inference import randomise_batchnorms
from mrl_dist.train.feature_cache import check_trunk_is_frozen
from mrl_dist.train.loop import train
from mrl_dist.train.modes import MRLMode, load_backbone

from train_configs import tiny_config

EVERY_TYPE = AdapterConfig(target_modules=["conv1d", "conv2d", "linear"])
MERGE_TOLERANCE = 1e-5
EXPORT_TOLERANCE = 1e-4


def waves(batch: int = 2, samples: int = 16000, seed: int = 0) -> torch.Tensor:
    return 0.1 * torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed))


def tiny_mrl(seed: int = 0) -> ReDimNetMRL:
    """An eval-mode MRL model on a random `tiny` trunk with random BatchNorm statistics, frozen."""
    torch.manual_seed(seed)
    backbone = build_preset("tiny")
    randomise_batchnorms(backbone, seed=seed)
    model = ReDimNetMRL.from_redimnet(backbone.eval(), dims=[32, 64, 192], head_init="pretrained")
    model.freeze_backbone()
    return model.eval()


def trained_factors(model: torch.nn.Module, seed: int = 1) -> None:
    """Non-zero B factors, as training leaves them (B starts at zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("lora_B"):
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))


@pytest.fixture(scope="module")
def base_file(tmp_path_factory):
    """An official-format `tiny` backbone (random weights and BatchNorm statistics)."""
    torch.manual_seed(0)
    backbone = build_preset("tiny")
    randomise_batchnorms(backbone, seed=0)
    return save_official_checkpoint(backbone.eval(), tmp_path_factory.mktemp("base") / "tiny.pt")


# --- the layers -------------------------------------------------------------------------------


def test_an_adapted_model_starts_equal_to_its_base():
    model = tiny_mrl()
    with torch.no_grad():
        before = model(waves())
        apply_adapters(model, EVERY_TYPE)
        assert torch.equal(model(waves()), before)


def test_every_wrapper_type_is_used_and_grouped_convolutions_are_left_alone():
    model = tiny_mrl()
    names = apply_adapters(model, EVERY_TYPE)
    kinds = {type(model.get_submodule(name)) for name in names}
    assert kinds == {LoRALinear, LoRAConv1d, LoRAConv2d}
    convs = [model.get_submodule(n).base for n in names if not isinstance(model.get_submodule(n), LoRALinear)]
    assert convs and all(conv.groups == 1 for conv in convs)
    grouped = [m for m in model.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d)) and m.groups > 1]
    assert grouped  # ReDimNet's depthwise convolutions, still plain layers


def test_merged_equals_unmerged_within_1e_5():
    model = tiny_mrl()
    apply_adapters(model, EVERY_TYPE)
    trained_factors(model)
    merged = merge_adapters(copy.deepcopy(model))
    assert not any(isinstance(m, (LoRALinear, LoRAConv1d, LoRAConv2d)) for m in merged.modules())
    with torch.no_grad():
        unmerged_out, merged_out, base_out = model(waves()), merged(waves()), tiny_mrl()(waves())
    assert (merged_out - unmerged_out).abs().max() < MERGE_TOLERANCE
    assert (unmerged_out - base_out).abs().max() > 1e-3  # the factors do change the output


def test_merging_twice_is_refused_also_after_a_checkpoint_round_trip(tmp_path):
    model = tiny_mrl()
    apply_adapters(model, AdapterConfig())
    trained_factors(model)
    model.save_checkpoint(tmp_path / "best.pt")  # written merged
    merge_adapters(model)
    with pytest.raises(AdapterError, match="already merged"):
        merge_adapters(model)
    loaded = ReDimNetMRL.from_checkpoint(tmp_path / "best.pt")
    with pytest.raises(AdapterError, match="already merged"):
        merge_adapters(loaded)
    with pytest.raises(AdapterError, match="no adapters to merge"):
        merge_adapters(tiny_mrl())


def test_the_inference_form_of_an_adapted_model_equals_it():
    model = tiny_mrl()
    apply_adapters(model, EVERY_TYPE)
    trained_factors(model)
    with torch.no_grad():
        expected = model(waves())
        got = inference_form(model)(waves())
    assert (got - expected).abs().max() < MERGE_TOLERANCE
    assert has_adapters(model)  # the model itself keeps its unmerged adapters


# --- which layers -----------------------------------------------------------------------------


def test_a_target_naming_no_layer_is_an_error_listing_the_candidates():
    with pytest.raises(AdapterError) as error:
        select_layers(tiny_mrl(), AdapterConfig(target_modules=["conv2d", "*.no_such_layer"]))
    message = str(error.value)
    assert "'*.no_such_layer'" in message and "conv1d, conv2d, linear" in message
    assert "pool.linear1" in message and "backbone.stage*.*.tcm.*.attention.q_proj" in message


def test_a_pattern_matching_only_depthwise_convolutions_says_they_are_not_adapted():
    with pytest.raises(AdapterError, match="only grouped"):
        select_layers(tiny_mrl(), AdapterConfig(target_modules=["*.dwconvs.*"]))


def test_an_unknown_stage_is_an_error_listing_the_parts():
    with pytest.raises(AdapterError, match="'stage9' is not a trunk part; parts: stem, stage0"):
        select_layers(tiny_mrl(), AdapterConfig(stages=["stage9"]))


def test_stages_and_patterns_narrow_the_layers():
    names = select_layers(
        tiny_mrl(), AdapterConfig(target_modules=["linear", "pool.linear1"], stages=["stage1", "pool"])
    )
    assert names and all(n.startswith(("backbone.stage1.", "pool.")) for n in names)
    assert "pool.linear1" in names and "pool.linear2" not in names


# --- BatchNorm policy and training mode -------------------------------------------------------


@pytest.mark.parametrize("policy, updates", [("frozen", False), ("train", True)])
def test_batchnorm_policy_decides_whether_trunk_statistics_update(policy, updates):
    model = tiny_mrl()
    apply_adapters(model, AdapterConfig(batchnorm=policy, dropout=0.1))
    model.train()
    norm = next(
        m for n, m in model.named_modules() if n.startswith("backbone.") and isinstance(m, torch.nn.BatchNorm2d)
    )
    before = norm.running_mean.clone()
    model(waves())
    assert (not torch.equal(norm.running_mean, before)) == updates
    wrappers = [m for m in model.modules() if isinstance(m, (LoRALinear, LoRAConv1d, LoRAConv2d))]
    assert all(m.training for m in wrappers)  # adapter dropout is on inside the frozen (eval) trunk
    assert not model.backbone.training
    model.eval()
    assert not any(m.training for m in wrappers)


def test_adapters_make_the_trunk_trainable_but_not_frozen():
    model = tiny_mrl()
    assert model.trunk_frozen
    apply_adapters(model, AdapterConfig())
    assert not model.trunk_frozen  # validation must not keep pooled features of the base
    model.train()
    model(waves()).sum().backward()
    factors = [p for n, p in model.named_parameters() if n.endswith("lora_A")]
    assert factors and all(p.grad is not None for p in factors)


# --- files ------------------------------------------------------------------------------------


def test_an_adapter_file_loads_onto_its_base_and_comes_off_again(tmp_path):
    model = tiny_mrl()
    base_pooled = model.pooled(waves())
    apply_adapters(model, AdapterConfig(batchnorm="train"))
    trained_factors(model)
    model.train()
    model(waves())  # moves the BatchNorm statistics, which the file then carries
    model.eval()
    expected = model(waves()).detach()
    path = save_adapter(tmp_path / "adapter.pt", model)
    fresh = tiny_mrl()
    load_adapter(path, fresh)
    fresh.head.load_state_dict(model.head.state_dict())  # the head is not in the file (best.pt has it)
    assert (fresh(waves()).detach() - expected).abs().max() < MERGE_TOLERANCE
    remove_adapters(fresh)  # the trunk, BatchNorm statistics included, is the base's again
    assert torch.equal(fresh.pooled(waves()), base_pooled)


def test_an_adapter_for_another_base_is_refused_naming_both_fingerprints(tmp_path):
    model = tiny_mrl(seed=0)
    apply_adapters(model, AdapterConfig())
    path = save_adapter(tmp_path / "adapter.pt", model)
    adapter_base = torch.load(path, weights_only=True)["base_fingerprint"]
    other = tiny_mrl(seed=5)
    with pytest.raises(AdapterError) as error:
        load_adapter(path, other)
    assert adapter_base in str(error.value) and trunk_fingerprint_of(other) in str(error.value)


def test_the_adapter_file_of_a_b0_trunk_at_rank_8_is_at_most_a_tenth_of_its_trunk(tmp_path):
    torch.manual_seed(0)
    model = ReDimNetMRL.from_redimnet(build_preset("b0").eval(), dims=[64, 128, 192, 256], head_init="pretrained")
    model.freeze_backbone()
    trunk_bytes = 4 * sum(
        p.numel() for n, p in model.named_parameters() if n.startswith(("spec.", "backbone.", "pool."))
    )
    apply_adapters(model, AdapterConfig(rank=8))
    size = os.path.getsize(save_adapter(tmp_path / "adapter.pt", model))
    assert size <= 0.10 * trunk_bytes, f"{size} bytes, {size / trunk_bytes:.1%} of the trunk's {trunk_bytes}"


def test_best_pt_pairs_with_adapter_pt_and_last_pt_with_last_adapter_pt(tmp_path):
    assert adapter_path_for(tmp_path / "best.pt") == tmp_path / "adapter.pt"
    assert adapter_path_for(tmp_path / "last.pt") == tmp_path / "last.adapter.pt"


# --- the mrl mode -----------------------------------------------------------------------------


def mrl_config(run_dir, base, **adapters) -> dict:
    return {
        "run_dir": str(run_dir),
        "model": {"backbone": str(base), "mrl_dims": [32, 64, 192], "head_init": "pretrained", "adapters": adapters},
        "training": {"mode": "mrl", "freeze_backbone": True, "mixed_precision": "no"},
    }


def test_in_mrl_mode_only_the_factors_the_head_and_the_class_weights_train(base_file, tmp_path):
    cfg = config_from_dict(mrl_config(tmp_path, base_file, rank=4))
    mode = MRLMode(cfg)
    module = mode.build(load_backbone(cfg), num_classes=5)
    trainable = [name for name, p in module.named_parameters() if p.requires_grad]
    assert all(n.startswith(("model.head.", "loss.")) or n.endswith(("lora_A", "lora_B")) for n in trainable)
    assert any(n.endswith("lora_A") for n in trainable) and any(n.startswith("model.head.") for n in trainable)
    factors = {id(p) for n, p in module.model.named_parameters() if n.endswith(("lora_A", "lora_B"))}
    assert not factors & mode.trunk_parameters(module)  # the factors train at the head's rate


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"data": {"features": "auto"}}, "data.features"),
        ({"training": {"mode": "classifier"}}, "model.adapters"),
        ({"training": {"mode": "mrl", "freeze_backbone": False}}, "model.adapters"),
        (
            {"training": {"mode": "mrl", "freeze_bn_stats": True}, "model": {"adapters": {"batchnorm": "train"}}},
            "model.adapters.batchnorm",
        ),
    ],
)
def test_configs_that_adapters_contradict_are_refused(base_file, tmp_path, changes, key):
    config = mrl_config(tmp_path, base_file)
    for section, values in changes.items():
        config[section] = {**config.get(section, {}), **values}
    with pytest.raises(ConfigError) as error:
        config_from_dict(config)
    assert error.value.key == key


def test_the_feature_cache_builder_refuses_adapters(base_file, tmp_path):
    cfg = config_from_dict(mrl_config(tmp_path, base_file))
    with pytest.raises(ConfigError, match="adapters change"):
        check_trunk_is_frozen(cfg, "launch/cache_features.py")


def test_adapters_on_a_random_trunk_are_refused(tmp_path):
    config = mrl_config(tmp_path, "tiny")
    config["model"]["pretrained"] = None
    with pytest.raises(ConfigError, match="randomly initialised"):
        MRLMode(config_from_dict(config))


# --- a run, its files, their export -----------------------------------------------------------


@pytest.fixture(scope="module")
def adapter_run(base_file, tmp_path_factory):
    """A finished 2-step mrl run with rank-8 adapters on the `tiny` base; its run folder."""
    shards = prepare_demo_shards(
        tmp_path_factory.mktemp("adapt-demo"), speakers=12, utterances=6, seed=3, shard_size_mb=1
    )
    run_dir = tmp_path_factory.mktemp("runs") / "adapt"
    config = tiny_config(
        run_dir,
        shards,
        model={
            "backbone": str(base_file),
            "head_init": "pretrained",
            "adapters": {"type": "lora", "rank": 8, "alpha": 16},
        },
        training={"mode": "mrl", "freeze_backbone": True, "max_steps": 2},
        loss={"class_init_batches": 4},
    )
    AcceleratorState._reset_state(reset_partial_state=True)
    assert train(config_from_dict(config))["status"] == "finished"
    return run_dir, shards


@pytest.mark.slow
def test_a_run_writes_adapter_pt_beside_a_best_pt_that_loads_and_evaluates(adapter_run, base_file, capsys):
    run_dir, shards = adapter_run
    assert (run_dir / "adapter.pt").is_file() and (run_dir / "last.adapter.pt").is_file()
    assert os.path.getsize(run_dir / "adapter.pt") <= 0.10 * os.path.getsize(base_file)
    best = ReDimNetMRL.from_checkpoint(run_dir / "best.pt")
    assert best.dims == [32, 64, 192] and not has_adapters(best)
    base = load_pretrained(base_file).state_dict()
    adapted = set(torch.load(run_dir / "adapter.pt", weights_only=True)["layers"])
    kept = [
        k for k in base if k.startswith(("backbone.", "pool.")) and not k.startswith(tuple(f"{n}." for n in adapted))
    ]
    trunk = best.state_dict()
    assert kept and all(torch.equal(base[k], trunk[k]) for k in kept)  # BatchNorm statistics included
    assert (
        evaluate_main(
            [
                "--checkpoint",
                str(run_dir / "best.pt"),
                "--data",
                str(shards / "val.manifest.json"),
                "--max-seconds",
                "1",
                "--no-det",
                "--json",
            ]
        )
        == 0
    )
    assert list(json.loads(capsys.readouterr().out)["eer"]) == ["32", "64", "192", "native"]


@pytest.mark.slow
def test_base_plus_adapter_plus_head_equals_the_merged_best_pt(adapter_run, base_file):
    run_dir, _ = adapter_run
    merged = ReDimNetMRL.from_checkpoint(run_dir / "best.pt")
    unmerged = ReDimNetMRL.from_checkpoint(base_file, adapter=run_dir / "adapter.pt", head=run_dir / "best.pt")
    assert has_adapters(unmerged)
    with torch.no_grad():
        assert (merged(waves(3, 24000)) - unmerged(waves(3, 24000))).abs().max() < MERGE_TOLERANCE


@pytest.mark.slow
def test_the_onnx_export_of_a_merged_best_pt_matches_pytorch(adapter_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from mrl_dist.export.convert import export_model, verify_export
    from mrl_dist.export.model import build_export

    run_dir, _ = adapter_run
    module, _, _ = build_export(run_dir / "best.pt", 64)
    path = export_model(module, tmp_path / "adapted-64.onnx", "onnx", exporter="legacy")
    assert verify_export(path, "onnx", module) < EXPORT_TOLERANCE
