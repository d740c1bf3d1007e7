"""ReDimNet2 loads official files exactly and reproduces the official outputs; it serves as an MRL
trunk, a teacher and a classifier-mode model like ReDimNet."""

from __future__ import annotations

import pytest
import torch

from mrl_dist.models import ReDimNetMRL, inference_form, load_pretrained, read_checkpoint
from mrl_dist.models.frontend_tf import TFMelFrontend
from mrl_dist.models.loading import (
    CheckpointError,
    build_model,
    model_family,
    official_payload,
    official_to_local,
    resolve_checkpoint,
    save_official_checkpoint,
)
from mrl_dist.models.presets import PRESETS, REDIMNET2_PRESETS, build_preset, preset_config
from mrl_dist.models.redimnet2 import ReDimNet2

from fixtures_path import MICRO_REDIMNET2, fixture_file, redimnet2_fixture

FIXTURES = [*MICRO_REDIMNET2, "v2tiny", "v2small", "v2b3"]  # v2*: the extended tier
TENSORS = ["mel", "backbone", "pooled", "embedding"]


def reference(name: str) -> dict:
    return torch.load(fixture_file(name, outputs=True), weights_only=True)


@pytest.fixture(scope="module", params=FIXTURES)
def official(request):
    """(name, model loaded from the official file, reference outputs)."""
    model = load_pretrained(fixture_file(request.param))
    return request.param, model, reference(request.param)


def test_official_file_loads_with_no_missing_or_unexpected_keys(official):
    name, _, _ = official
    payload = read_checkpoint(fixture_file(name))
    model = ReDimNet2(**payload["model_config"])
    result = model.load_state_dict(official_to_local(payload["state_dict"]), strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_official_outputs_are_reproduced_within_1e_4(official):
    name, model, ref = official
    assert isinstance(model, ReDimNet2) and not model.training
    with torch.no_grad():
        out = model.extract(ref["wave"])
        embedding = model(ref["wave"])
    for key in TENSORS:
        assert out[key].shape == ref[key].shape, (name, key)
        assert (out[key] - ref[key]).abs().max().item() < 1e-4, (name, key)
    assert (embedding - ref["embedding"]).abs().max().item() < 1e-4


def test_inference_form_equals_the_official_embedding(official):
    _, model, ref = official
    with torch.inference_mode():
        embedding = inference_form(model)(ref["wave"])
    assert (embedding - ref["embedding"]).abs().max().item() < 1e-4


def test_written_official_file_has_the_official_keys_and_values(official, tmp_path):
    name, model, _ = official
    original = read_checkpoint(fixture_file(name))
    payload = official_payload(model)
    assert set(payload["state_dict"]) == set(original["state_dict"])
    for key, value in original["state_dict"].items():
        assert torch.equal(payload["state_dict"][key], value), key
    save_official_checkpoint(model, tmp_path / "again.pt")
    assert isinstance(load_pretrained(tmp_path / "again.pt"), ReDimNet2)


@pytest.mark.parametrize("name, n_mels", [("micro2-tf", 16), ("v2small", 72)])
def test_tf_frontend_builds_the_official_basis_and_mel_weights(name, n_mels):
    state = read_checkpoint(fixture_file(name))["state_dict"]
    frontend = TFMelFrontend(n_mels=n_mels, hop_length=160, do_preemph=True, norm_signal=True)
    assert torch.allclose(frontend.dft_real, state["spec.torchfbank.2.real_kernel_pt"], atol=1e-6)
    assert torch.allclose(frontend.dft_imag, state["spec.torchfbank.2.image_kernel_pt"], atol=1e-6)
    assert torch.allclose(frontend.mel_weights, state["spec.torchfbank.2.melbanks_pt"], atol=1e-6)
    # No STFT operator: the graph is convolutions, so it exports where torch.stft does not.
    mel = frontend.eval()(reference(name)["wave"])
    assert (mel - reference(name)["mel"]).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", [*MICRO_REDIMNET2, "v2b3"])
def test_families_are_told_apart_by_model_config(name):
    v2 = read_checkpoint(fixture_file(name))["model_config"]
    assert model_family(v2) == "redimnet2"
    assert model_family(preset_config("b2")) == "redimnet"
    # A minimal ReDimNet2 config without any ReDimNet2-only key: the stride pairs tell.
    minimal = {"F": 32, "C": 8, "stages_setup": [[[1, 1], 1, 1, [[3, 3]], 8]]}
    assert model_family(minimal) == "redimnet2" and isinstance(build_model(minimal), ReDimNet2)


@pytest.mark.parametrize(
    "key, value",
    [
        ("causal", "full"),
        ("feat_type", "tf_spec"),
        ("block_1d_type", "v2_conv+att"),
        ("block_2d_type", "convnext_like_post_ln"),
        ("fm_weigthing_type", "X"),
        ("spec_in_channels", 2),
        ("att_dos", {"att_do": 0.1}),
        ("agg_gnorm", 7),
    ],
)
def test_unsupported_config_value_is_an_error_naming_key_and_value(key, value):
    with pytest.raises(ValueError, match=rf"ReDimNet2 model_config: {key}="):
        ReDimNet2(**preset_config("redimnet2-tiny", **{key: value}))


def test_unknown_config_key_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['colour'\]"):
        ReDimNet2(**preset_config("redimnet2-tiny", colour="red"))


def test_b3_preset_is_the_official_b3_configuration():
    official = read_checkpoint(redimnet2_fixture("v2b3-random.pt"))
    model = build_preset("redimnet2-b3")
    assert model.model_config == ReDimNet2(**official["model_config"]).model_config
    assert sum(p.numel() for p in model.parameters()) == 4_205_768  # the fixture README's count
    shapes = {k: tuple(v.shape) for k, v in official_payload(model)["state_dict"].items()}
    assert shapes == {k: tuple(v.shape) for k, v in official["state_dict"].items()}


@pytest.mark.parametrize("name", REDIMNET2_PRESETS)
def test_every_preset_builds_and_embeds(name):
    if name == "redimnet2-b6":  # 12 M parameters: build only
        assert sum(p.numel() for p in build_preset(name).parameters()) > 12e6
        return
    model = build_preset(name).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 16000)).shape == (2, 192)


def test_optional_layers_build_and_run():
    config = preset_config(
        "redimnet2-tiny",
        dual_agg=True,
        use_freq_pos_enc=True,
        return_2d_output=False,
        out_channels=96,
        feat_type="pt",
        spec_params={"do_preemph": True},
        pad_right_samples=160,
        before_pool_offset=2,
        emb_bn=True,
        fm_weigthing_type="N",
        agg_gnorm=False,
        block_1d_type="att",
    )
    model = ReDimNet2(**config).eval()
    assert hasattr(model.backbone, "stage0_pre") and hasattr(model.backbone, "stage0_1d")
    with torch.no_grad():
        out = model.extract(torch.randn(2, 16000))
    assert out["backbone"].shape[1] == 96 and out["embedding"].shape == (2, 192)


# ---------------------------------------------------------------------------- names and files


def test_redimnet2_name_resolves_to_the_official_file_name(tmp_path, isolated_hub, monkeypatch):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "b6-vb2+vox2_v0-lm.pt").write_bytes(fixture_file("micro2-tf").read_bytes())
    monkeypatch.setenv("MRL_DIST_CHECKPOINTS", str(folder))
    model = load_pretrained("redimnet2-b6", train_type="lm", dataset="vb2+vox2_v0")
    assert isinstance(model, ReDimNet2)
    assert resolve_checkpoint("redimnet2-b6", train_type="lm", dataset="vb2+vox2_v0") == folder / "b6-vb2+vox2_v0-lm.pt"


def test_redimnet2_name_offline_names_the_file_and_the_release(isolated_hub, monkeypatch):
    monkeypatch.setenv("MRL_DIST_OFFLINE", "1")
    with pytest.raises(CheckpointError, match=r"checkpoint b2-vox2-lm\.pt not found; searched: .*redimnet2"):
        load_pretrained("redimnet2-b2")


def test_redimnet2_download_goes_to_its_own_hub_folder(tmp_path, isolated_hub, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "b0-vox2-lm.pt").write_bytes(fixture_file("micro2-tf").read_bytes())
    monkeypatch.setenv("MRL_DIST_REDIMNET2_URL", f"file://{mirror}/{{file}}")
    assert isinstance(load_pretrained("redimnet2-b0"), ReDimNet2)
    assert (isolated_hub / "redimnet2" / "b0-vox2-lm.pt").is_file()


def test_a_file_of_the_other_family_under_a_redimnet2_name_is_refused(tmp_path, isolated_hub, monkeypatch):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "b0-vox2-lm.pt").write_bytes(fixture_file("micro-b").read_bytes())
    monkeypatch.setenv("MRL_DIST_CHECKPOINTS", str(folder))
    with pytest.raises(CheckpointError, match="holds a redimnet model"):
        load_pretrained("redimnet2-b0")


def test_redimnet2_presets_are_presets():
    assert set(REDIMNET2_PRESETS) <= set(PRESETS)
    with pytest.raises(ValueError, match="comes from the official file"):
        preset_config("redimnet2-b2")


# ---------------------------------------------------------------------------- MRL over ReDimNet2


@pytest.mark.parametrize("name", ["micro2-tf", "v2small"])
@pytest.mark.parametrize("head_init", ["pretrained", "pca", "random"])
def test_mrl_model_over_a_redimnet2_trunk(head_init, name, tmp_path):
    trunk = load_pretrained(fixture_file(name))
    ref = reference(name)
    native_dim = ref["embedding"].shape[1]
    dims = [native_dim // 3, 2 * native_dim // 3, native_dim, 4 * native_dim // 3]
    pooled = trunk.pooled(ref["wave"]).detach()
    features = pooled.repeat(150, 1) + 0.05 * torch.randn(
        300, pooled.shape[1], generator=torch.Generator().manual_seed(0)
    )
    model = ReDimNetMRL.from_redimnet(trunk, dims=dims, head_init=head_init, pooled_features=features).eval()
    with torch.no_grad():
        every = model.forward_all(ref["wave"])
        native = model.native_embedding(model.pooled(ref["wave"]))
    assert {d: e.shape for d, e in every.items()} == {d: (2, d) for d in dims}
    assert (native - ref["embedding"]).abs().max().item() < 1e-4
    if head_init == "pretrained":  # the native-dim prefix is the native embedding
        assert (every[native_dim] - ref["embedding"]).abs().max().item() < 1e-4
    model.save_checkpoint(tmp_path / "mrl.pt")
    loaded = ReDimNetMRL.from_checkpoint(tmp_path / "mrl.pt")
    with torch.no_grad():
        assert torch.allclose(loaded(ref["wave"]), model(ref["wave"]), atol=1e-5)
    assert type(loaded.backbone).__name__ == "ReDimNet2Backbone"


def test_mrl_freezing_and_unfreezing_by_stage_name_over_redimnet2():
    trunk = build_preset("redimnet2-tiny")
    model = ReDimNetMRL.from_redimnet(trunk, dims=[32, 64], head_init="random")
    model.freeze_backbone()
    assert model.trunk_frozen and all(not p.requires_grad for p in model.backbone.parameters())
    model.unfreeze("stage2")
    trainable = {n.split(".")[1] for n, p in model.named_parameters() if p.requires_grad and n.startswith("backbone.")}
    assert trainable == {"stage2"}
    with pytest.raises(ValueError, match="unknown part"):
        model.unfreeze("stage9")
