"""ReDimNet matches the official implementation: config schema, keys, parameter counts, outputs."""

import json

import pytest
import torch

from mrl_dist.models import (
    OFFICIAL_PRESETS,
    ReDimNet,
    build_preset,
    load_pretrained,
    official_payload,
    preset_config,
    read_checkpoint,
)
from mrl_dist.models.frontend import MelFrontend

from fixtures_path import MICRO_REDIMNET, OFFICIAL_SHAPES, fixture_file

OFFICIAL_STATE_DICTS = json.loads(OFFICIAL_SHAPES.read_text())
PARITY_MODELS = [*MICRO_REDIMNET, "b0", "b2"]  # b0, b2: the extended tier


@pytest.mark.parametrize("name", PARITY_MODELS)
@pytest.mark.parametrize("tensor", ["mel", "backbone", "pooled", "embedding"])
def test_official_checkpoint_reproduces_reference_outputs(name, tensor):
    model = load_pretrained(fixture_file(name))
    reference = torch.load(fixture_file(name, outputs=True), weights_only=True)
    with torch.no_grad():
        outputs = model.extract(reference["wave"])
    assert outputs[tensor].shape == reference[tensor].shape
    assert (outputs[tensor] - reference[tensor]).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", PARITY_MODELS)
def test_forward_returns_the_official_embedding(name):
    model = load_pretrained(fixture_file(name))
    reference = torch.load(fixture_file(name, outputs=True), weights_only=True)
    assert not model.training
    with torch.no_grad():
        embedding = model(reference["wave"])
    assert (embedding - reference["embedding"]).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", PARITY_MODELS)
def test_written_official_file_has_the_official_keys_and_values(name, tmp_path):
    original = read_checkpoint(fixture_file(name))
    payload = official_payload(load_pretrained(fixture_file(name)))
    assert set(payload["state_dict"]) == set(original["state_dict"])
    for key, value in original["state_dict"].items():
        assert torch.equal(payload["state_dict"][key], value), key
    assert ReDimNet(**payload["model_config"]).model_config == payload["model_config"]


@pytest.mark.parametrize("name", OFFICIAL_PRESETS)
def test_preset_matches_official_config_keys_shapes_and_parameter_count(name):
    official = OFFICIAL_STATE_DICTS[name]
    assert preset_config(name) == json.loads(json.dumps(official["model_config"]))
    payload = official_payload(build_preset(name))
    shapes = {key: list(value.shape) for key, value in payload["state_dict"].items()}
    assert shapes == {key: list(shape) for key, shape in dict(official["state_dict"]).items()}
    model = ReDimNet(**official["model_config"])
    assert sum(p.numel() for p in model.parameters()) == official["num_params"]


def test_tiny_preset_is_small_enough_for_cpu_demos():
    model = build_preset("tiny")
    assert sum(p.numel() for p in model.parameters()) <= 400_000
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 16000)).shape == (2, 192)


@pytest.mark.parametrize(
    "key, value",
    [
        ("feat_type", "tf"),
        ("tf_optimized_arch", True),
        ("block_1d_type", "lstm"),
        ("block_2d_type", "dense"),
        ("pooling_func", "XVEC"),
    ],
)
def test_unsupported_config_value_is_an_error_naming_key_and_value(key, value):
    with pytest.raises(ValueError, match=f"{key}.*{value}"):
        ReDimNet(**preset_config("b0", **{key: value}))


def test_unknown_config_key_is_an_error_naming_it():
    with pytest.raises(ValueError, match="not_a_key"):
        ReDimNet(**preset_config("b0", not_a_key=1))


@pytest.mark.parametrize("block_1d", ["att", "conv+att", "fc", "conv"])
@pytest.mark.parametrize("block_2d", ["convnext_like", "convnext_like_relu", "basic_resnet", "basic_resnet_fwse"])
def test_every_block_type_builds_and_runs(block_1d, block_2d):
    config = preset_config("tiny", block_1d_type=block_1d, block_2d_type=block_2d)
    model = ReDimNet(**config).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 8000)).shape == (1, 192)


def test_optional_official_layers_build_and_round_trip():
    config = preset_config(
        "tiny", out_channels=96, emb_bn=True, num_classes=7, head_activation="nn.Sigmoid()", pooling_func="TSTP"
    )
    model = ReDimNet(**config).eval()
    wave = torch.randn(2, 8000)
    with torch.no_grad():
        assert model(wave).shape == (2, 192)
        assert model.classify(wave).shape == (2, 7)
    payload = official_payload(model)
    clone = ReDimNet(**payload["model_config"])
    clone.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(clone.eval()(wave), model(wave))


def test_return_all_outputs_gives_every_stage_output():
    model = ReDimNet(**preset_config("tiny", return_all_outputs=True)).eval()
    with torch.no_grad():
        embedding, stages = model(torch.randn(1, 8000))
    assert embedding.shape == (1, 192)
    assert len(stages) == len(model.config.stages_setup) + 2  # stem, stages, fused


@pytest.mark.parametrize("name, n_mels", [("micro-b", 32), ("b2", 72)])
def test_mel_filterbank_matches_the_official_buffer(name, n_mels):
    official = read_checkpoint(fixture_file(name))["state_dict"]
    frontend = MelFrontend(n_mels=n_mels)
    assert (frontend.mel_filterbank - official["spec.torchfbank.2.mel_scale.fb"]).abs().max() < 1e-5
    assert torch.equal(frontend.window, official["spec.torchfbank.2.spectrogram.window"])


def test_spec_augment_masks_only_in_training_mode():
    frontend = MelFrontend(n_mels=40, do_spec_aug=True, freq_mask_width=[4, 8], time_mask_width=[5, 10])
    wave = torch.randn(4, 16000)
    torch.manual_seed(0)
    clean = frontend.eval()(wave)
    assert torch.equal(frontend(wave), clean)  # eval: deterministic, no masks
    masked = frontend.train()(wave)
    zeroed_bins = (masked == 0).all(dim=2).sum(dim=1)  # frequency masks zero whole rows
    assert (zeroed_bins >= 4).all() and (zeroed_bins <= 8).all()


def test_frontend_matches_torchaudio_when_available():
    torchaudio = pytest.importorskip("torchaudio")
    reference = torchaudio.transforms.MelSpectrogram(
        sample_rate=16000,
        n_fft=512,
        win_length=400,
        hop_length=160,
        f_min=20,
        f_max=7600,
        n_mels=72,
        window_fn=torch.hamming_window,
    )
    frontend = MelFrontend(n_mels=72, do_preemph=False, spec_norm=None)
    wave = torch.randn(2, 16000)
    expected = (reference(wave) + 1e-6).log()
    assert (frontend(wave) - expected).abs().max() < 1e-3


def test_frontend_output_follows_input_dtype_but_computes_in_float32():
    frontend = MelFrontend(n_mels=40).eval()
    wave = torch.randn(1, 16000)
    mel32 = frontend(wave)
    mel16 = frontend(wave.bfloat16())
    assert mel16.dtype == torch.bfloat16
    assert (mel16.float() - mel32).abs().max() < 0.1
