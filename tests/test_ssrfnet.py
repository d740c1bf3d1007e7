"""SSRFNet: the layer-group merge, the PFMs and the fused stage inputs are what the public code
builds; gradients reach the student and the fusion but never a frozen PTM; odd lengths align;
files round-trip; it trains in classifier mode, serves as an MRL trunk and as a teacher."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers", reason="SSRFNet's PTM needs the [ptm] extra")

from mrl_dist.config import (
    TeacherConfig,  # noqa: E402
    config_from_dict,  # noqa: E402
)
from mrl_dist.demo.run import prepare_demo_shards  # noqa: E402
from mrl_dist.models import (  # noqa: E402
    ReDimNetMRL,
    build_preset,
    inference_form,
    load_pretrained,
    preset_config,
    save_official_checkpoint,
)
from mrl_dist.models.loading import official_to_local, read_checkpoint  # noqa: E402
from mrl_dist.models.ptm import PTMError, load_wavlm  # noqa: E402
from mrl_dist.models.ssrfnet import SSRFNet, apply_fusion_overrides, load_redimnet_weights, window_centres  # noqa: E402
from mrl_dist.train import train  # noqa: E402
from mrl_dist.train.distill import load_teachers  # noqa: E402

from train_configs import accelerate_two_cpu_processes, launch, read_metrics, tiny_config, write_config  # noqa: E402


def tiny(**fusion) -> SSRFNet:
    config = preset_config("ssrfnet-tiny")
    return SSRFNet(**(apply_fusion_overrides(config, fusion) if fusion else config))


@pytest.mark.parametrize("layers, expected", [(12, [2, 5, 7, 10]), (24, [2, 9, 15, 22])])
def test_window_centres_are_the_public_codes(layers, expected):
    assert window_centres(layers, 4, 4) == expected


def test_each_injected_stage_mixes_one_more_input():
    model = tiny()  # 3 stages, the first 2 injected
    backend = model.backbone.backend
    counts = [getattr(backend, f"stage{i}")[0].w.shape[1] for i in range(3)]
    assert counts == [2, 4, 5]  # [S, P1], [S, P1, F1, P2], [S, P1, F1, P2, F2]
    assert backend.fin_wght1d.w.shape[1] == 6
    assert model.backbone.merge.starts == [0, 2]  # 4 student layers, windows of 2 centred at [1, 3]


def test_pfm_projects_each_merged_group_to_the_backbone_width():
    model = tiny().eval()
    with torch.no_grad():
        states = model.backbone.states(torch.randn(2, 16000))
        groups = model.backbone.merge(states)
        projections = [pfm(g) for pfm, g in zip(model.backbone.pfm, groups)]
    assert states.shape == (2, 5, 49, 32)  # [B, L + 1, frames, D]
    assert [g.shape for g in groups] == [(2, 32, 49)] * 2
    assert [p.shape for p in projections] == [(2, 8 * 32, 49)] * 2


def test_gradients_reach_student_and_fusion_but_never_the_frozen_ptm():
    model = tiny()
    model.attach_ptm_teacher()
    model.train()
    embedding, aux = model.aux_losses(torch.randn(3, 16000))
    (embedding.square().mean() + aux["layer_prediction"]).backward()
    grads = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(n.startswith("backbone.student.") for n in grads)
    assert any(n.startswith("backbone.pfm.") for n in grads) and any(n.startswith("backbone.merge.") for n in grads)
    teacher = model.backbone._teacher[0]
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not any(k.startswith("backbone._teacher") for k in model.state_dict())  # never saved

    frozen = tiny(student="none")  # the frozen PTM's own states feed the backend
    frozen(torch.randn(2, 16000)).sum().backward()
    assert all(p.grad is None for p in frozen.backbone.ptm.parameters())
    assert all(p.grad is not None for p in frozen.backbone.pfm.parameters())


@pytest.mark.parametrize("samples", [16160, 16000 + 319, 15999])
def test_lengths_that_are_not_multiples_of_320_align(samples):
    model = tiny().eval()
    with torch.no_grad():
        features = model.extract(torch.randn(2, samples))["backbone"]
        stem = model.backbone.backend.stem(model.spec(torch.randn(2, samples))).shape[-1]
    assert features.shape[-1] == min(stem, model.backbone.states(torch.randn(1, samples)).shape[2])


def test_interpolating_alignment_loads_an_official_redimnet_backend(tmp_path):
    redimnet = build_preset("tiny", F=32)  # the tiny ReDimNet: F 32, C 8, three stages
    save_official_checkpoint(redimnet.eval(), tmp_path / "redimnet.pt")
    config = apply_fusion_overrides(
        preset_config(
            "ssrfnet-tiny",
            mel_bins=32,
            block_2d_type="convnext_like",
            stages_setup=redimnet.model_config["stages_setup"],
        ),
        {"time_align": "interpolate"},
    )
    model = SSRFNet(**config)
    official = official_to_local(read_checkpoint(tmp_path / "redimnet.pt")["state_dict"])
    fresh = load_redimnet_weights(model, official, str(tmp_path / "redimnet.pt"))
    assert torch.equal(
        model.backbone.backend.stage1[3].conv_block.pwconv1.weight,
        redimnet.backbone.stage1[3].conv_block.pwconv1.weight,
    )
    assert torch.equal(model.linear.weight, redimnet.linear.weight)
    assert "backbone.backend.stage1.0.w" in fresh and all(not k.startswith("backbone.backend.stem") for k in fresh)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 16000)).shape == (2, 192)


def test_file_round_trip_and_inference_form(tmp_path):
    model = tiny().eval()
    save_official_checkpoint(model, tmp_path / "ssrfnet.pt")
    loaded = load_pretrained(tmp_path / "ssrfnet.pt")
    wave = torch.randn(2, 20000)
    with torch.no_grad():
        assert torch.allclose(loaded(wave), model(wave), atol=1e-6)
        assert torch.allclose(inference_form(model)(wave), model(wave), atol=1e-5)


def test_a_named_ptm_offline_fails_naming_the_model_and_the_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("MRL_DIST_OFFLINE", "1")
    with pytest.raises(PTMError, match=r"'microsoft/wavlm-large' could not be loaded; looked in .*hf/hub.*offline"):
        load_wavlm("microsoft/wavlm-large")
    cfg = config_from_dict({"model": {"backbone": "ssrfnet", "pretrained": None}, "training": {"mode": "classifier"}})
    from mrl_dist.train.modes import load_backbone, make_mode

    with pytest.raises(PTMError, match="microsoft/wavlm-large"):  # at build time, before any step
        make_mode(cfg).build(load_backbone(cfg), 10)


# ---------------------------------------------------------------------------- in the trainer


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("ssrfnet")
    return prepare_demo_shards(root, speakers=10, utterances=6, seed=8, shard_size_mb=1)


@pytest.mark.slow
def test_classifier_training_lowers_the_loss_then_the_file_is_an_mrl_trunk_and_a_teacher(shards, tmp_path):
    run_dir = tmp_path / "classifier"
    cfg = config_from_dict(
        tiny_config(
            run_dir,
            shards,
            model={"backbone": "ssrfnet-tiny"},
            training={"max_steps": 16, "optimizer": {"name": "adamw", "lr": 0.003}},
            validation={"every_steps": 16},
            checkpoint={"every_steps": 16},
            logging={"every_steps": 4},
        )
    )
    assert train(cfg)["status"] == "finished"
    losses = [
        float(part.split("=")[1])
        for line in (run_dir / "train.log").read_text().splitlines()
        for part in line.split()
        if part.startswith("loss=")
    ]
    assert len(losses) >= 3 and losses[-1] < losses[0]
    assert "layer_prediction=" in (run_dir / "train.log").read_text()

    mrl_dir = tmp_path / "mrl"
    cfg = config_from_dict(
        tiny_config(
            mrl_dir,
            shards,
            model={"backbone": str(run_dir / "best.pt"), "head_init": "pca", "pca_batches": 2},
            data={"features": "auto", "feature_crops_per_utterance": 1},
            training={"mode": "mrl", "freeze_backbone": True},
        )
    )
    assert train(cfg)["status"] == "finished"
    assert set(read_metrics(mrl_dir)[-1]["eer"]) >= {"32", "64", "192", "native"}
    assert type(ReDimNetMRL.from_checkpoint(mrl_dir / "best.pt").backbone).__name__ == "SSRFNetTrunk"

    (teacher,) = load_teachers([TeacherConfig(source=str(run_dir / "best.pt"), dims=[192])])
    with torch.no_grad():
        assert teacher.model(torch.randn(2, 16000)).shape == (2, 192)


@pytest.mark.slow
def test_two_processes_train_an_ssrfnet(shards, tmp_path):
    run_dir = tmp_path / "ddp"
    config = write_config(
        tmp_path / "ssrfnet.yaml",
        tiny_config(run_dir, shards, model={"backbone": "ssrfnet-tiny"}, training={"mixed_precision": "bf16"}),
    )
    process = launch(accelerate_two_cpu_processes(config, 29720, "bf16"), tmp_path)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    assert "ranks=2" in (run_dir / "train.log").read_text()
    assert [r["step"] for r in read_metrics(run_dir) if r["step"] > 0] == [2, 4]
    assert isinstance(load_pretrained(run_dir / "best.pt"), SSRFNet)
