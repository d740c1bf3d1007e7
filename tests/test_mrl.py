"""ReDimNetMRL keeps the pretrained accuracy at initialisation and trains only what it should."""

import pytest
import torch

from mrl_dist.losses import MatryoshkaAAMLoss
from mrl_dist.models import ReDimNetMRL, build_preset, collect_pooled, pca_rotation

torch.manual_seed(0)
WAVES = [torch.randn(8, 12000) for _ in range(6)]  # 48 utterances of 0.75 s


@pytest.fixture(scope="module")
def pooled(loaded_b0):
    return collect_pooled(loaded_b0, WAVES, max_batches=6)


def test_pretrained_head_192_prefix_equals_native_embedding(pretrained):
    model = ReDimNetMRL.from_redimnet(pretrained, dims=[64, 128, 192, 256], head_init="pretrained").eval()
    wave = torch.randn(3, 20000)
    with torch.no_grad():
        assert torch.equal(model(wave, dim=192), pretrained(wave))
        extra = model(wave)[:, 192:]
    assert extra.abs().mean() < 0.5 * model(wave, dim=192).abs().mean()  # new rows start quiet


def test_pretrained_head_folds_embedding_batchnorm_exactly():
    redimnet = build_preset("tiny", emb_bn=True)
    redimnet.bn2.running_mean.uniform_(-1, 1)
    redimnet.bn2.running_var.uniform_(0.5, 2)
    redimnet.eval()
    model = ReDimNetMRL.from_redimnet(redimnet, dims=[64, 192], head_init="pretrained").eval()
    wave = torch.randn(2, 16000)
    with torch.no_grad():
        assert (model(wave, 192) - redimnet(wave)).abs().max() < 1e-5


def test_pca_head_prefix_reconstruction_error_falls_with_dim(pretrained):
    # PCA needs more vectors than dimensions: 600 pooled vectors with a decaying spectrum.
    generator = torch.Generator().manual_seed(1)
    pooled = torch.randn(600, 1200, generator=generator) * torch.linspace(2.0, 0.1, 1200)
    dims = [8, 16, 32, 64, 128, 192]
    model = ReDimNetMRL.from_redimnet(pretrained, dims=dims, head_init="pca", pooled_features=pooled).eval()
    rotation, mean = pca_rotation(model.native, pooled)
    with torch.no_grad():
        rotated = model.head(pooled).double()
        embeddings = model.native.eval()(pooled).double()
    assert torch.allclose(rotated, (embeddings - mean) @ rotation, atol=1e-3)
    errors = []
    for dim in dims:
        reconstruction = rotated[:, :dim] @ rotation[:, :dim].T + mean
        errors.append(((embeddings - reconstruction) ** 2).sum(dim=1).mean().item())
    assert all(b < a for a, b in zip(errors, errors[1:]))
    assert errors[-1] < 1e-6 * errors[0]
    # Each PCA prefix reconstructs better than keeping the first d native coordinates.
    for dim, error in zip(dims[:-1], errors):
        naive = embeddings.clone()
        naive[:, dim:] = mean[dim:]
        assert error < ((embeddings - naive) ** 2).sum(dim=1).mean().item()


def test_pca_head_keeps_full_native_information_at_192(pretrained, pooled):
    model = ReDimNetMRL.from_redimnet(pretrained, dims=[64, 192], head_init="pca", pooled_features=pooled).eval()
    wave = torch.randn(4, 16000)
    with torch.no_grad():
        rotated, native = model(wave, 192), pretrained(wave)
    # The head is a pure rotation of the native embedding: norms and cosine scores survive.
    assert torch.allclose(rotated.norm(dim=1), native.norm(dim=1), rtol=1e-4)
    assert torch.allclose(rotated @ rotated.T, native @ native.T, rtol=1e-3, atol=1e-3)


def test_pca_needs_pooled_features(pretrained):
    with pytest.raises(ValueError, match="pooled_features"):
        ReDimNetMRL.from_redimnet(pretrained, head_init="pca")


def test_unknown_head_init_is_an_error(pretrained):
    with pytest.raises(ValueError, match="head_init.*'zeros'"):
        ReDimNetMRL.from_redimnet(pretrained, head_init="zeros")


@pytest.mark.parametrize("dims", [[], [64, 64], [128, 64], [0, 64]])
def test_dims_must_increase(dims):
    with pytest.raises(ValueError, match="strictly increasing"):
        ReDimNetMRL(build_preset("tiny").model_config, dims)


def test_forward_all_gives_every_prefix_of_one_pass(pretrained):
    model = ReDimNetMRL.from_redimnet(pretrained, dims=[16, 32, 512], head_init="pretrained").eval()
    wave = torch.randn(2, 16000)
    with torch.no_grad():
        full, every = model(wave), model.forward_all(wave)
    assert full.shape == (2, 512)
    assert {d: e.shape[1] for d, e in every.items()} == {16: 16, 32: 32, 512: 512}
    assert torch.equal(every[32], full[:, :32]) and torch.equal(model(wave, dim=16), full[:, :16])


def test_frozen_backbone_stays_in_eval_mode_after_train(pretrained):
    model = ReDimNetMRL.from_redimnet(pretrained, head_init="pretrained")
    model.freeze_backbone()
    model.train()
    assert model.head.training
    assert not model.backbone.training and not model.pool.training and not model.native.training
    assert all(not m.training for m in model.backbone.modules())


def test_frozen_backbone_batchnorm_statistics_untouched_by_training(pretrained):
    model = ReDimNetMRL.from_redimnet(pretrained, head_init="pretrained")
    model.freeze_backbone()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("head.")}
    head_mean = model.head.bn.running_mean.clone()
    with torch.no_grad():
        model(torch.randn(4, 16000))
    after = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(head_mean, model.head.bn.running_mean)  # the head does train


def test_gradients_reach_only_trainable_parts(pretrained):
    model = ReDimNetMRL.from_redimnet(pretrained, dims=[64, 128], head_init="pretrained")
    model.freeze_backbone()
    model.train()
    loss_fn = MatryoshkaAAMLoss(model.dims, num_classes=5)
    loss, _ = loss_fn(model(torch.randn(4, 16000)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {"head.bn.weight", "head.bn.bias", "head.linear.weight", "head.linear.bias"}
    assert loss_fn.weight.grad is not None


def test_unfreezing_a_stage_trains_it_in_train_mode(pretrained):
    model = ReDimNetMRL.from_redimnet(pretrained, head_init="pretrained")
    model.freeze_backbone()
    model.unfreeze("stage4")
    model.train()
    assert model.backbone.stage4.training and not model.backbone.stage3.training
    model(torch.randn(2, 16000)).sum().backward()
    grads = {n.split(".")[1] for n, p in model.named_parameters() if p.grad is not None and n.startswith("backbone.")}
    assert grads == {"stage4"}


def test_unfreezing_keeps_official_fixed_parameters_fixed(pretrained):
    model = ReDimNetMRL.from_redimnet(pretrained, head_init="pretrained")
    model.freeze_backbone()
    model.unfreeze("all")
    assert not model.backbone.stage0[0].w.requires_grad  # a single-input mix is a constant
    assert model.backbone.stage1[0].w.requires_grad


def test_unknown_part_name_is_an_error_listing_parts(pretrained):
    model = ReDimNetMRL.from_redimnet(pretrained, head_init="pretrained")
    with pytest.raises(ValueError, match="'stage9'.*stage4"):
        model.unfreeze("stage9")


def test_checkpoint_round_trip_with_weights_only(tmp_path, pretrained, pooled):
    model = ReDimNetMRL.from_redimnet(pretrained, head_init="pca", pooled_features=pooled).eval()
    path = tmp_path / "best.pt"
    model.save_checkpoint(path)
    payload = torch.load(path, weights_only=True)
    assert set(payload) == {"model_config", "mrl_config", "state_dict"}
    assert payload["mrl_config"] == {"dims": [64, 128, 192, 256], "head_init": "pca", "keep_native": True}
    again = ReDimNetMRL.from_checkpoint(path)
    wave = torch.randn(2, 16000)
    with torch.no_grad():
        assert torch.equal(again(wave), model(wave))
        assert torch.equal(again.native_embedding(again.pooled(wave)), pretrained(wave))


def test_centred_pca_is_available_and_folds_the_mean_into_the_bias(pretrained, pooled):
    model = ReDimNetMRL.from_redimnet(
        pretrained, dims=[192], head_init="pca", pooled_features=pooled, pca_center=True
    ).eval()
    with torch.no_grad():
        centred = model.head(pooled)
    assert centred.mean(dim=0).abs().max() < 1e-3


def test_from_redimnet_takes_over_the_trunk_instead_of_building_a_second_one(pretrained, monkeypatch):
    architecture = ReDimNetMRL(pretrained.model_config, dims=[64, 192])  # the keys and flags to match
    expected = {k: v.clone() for k, v in pretrained.state_dict().items()}

    def no_second_trunk(config):
        raise AssertionError("from_redimnet built a second trunk")

    monkeypatch.setattr("mrl_dist.models.mrl.build_model", no_second_trunk)
    model = ReDimNetMRL.from_redimnet(pretrained, dims=[64, 192], head_init="pretrained")
    assert model.backbone is pretrained.backbone and model.spec is pretrained.spec and model.pool is pretrained.pool
    assert model.native.linear is pretrained.linear and model.native.bn is pretrained.bn
    state = model.state_dict()
    assert list(state) == list(architecture.state_dict())
    for key, value in expected.items():
        mrl_key = f"native.{key}" if key.split(".")[0] in ("bn", "linear", "bn2") else key
        assert torch.equal(state[mrl_key], value), key
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in architecture.named_parameters() if p.requires_grad}
    assert not model.training  # the trunk's mode, as load_pretrained returns it


def test_from_redimnet_without_native_leaves_the_embedding_layer_out(pretrained):
    model = ReDimNetMRL.from_redimnet(pretrained, dims=[64, 192], head_init="pretrained", keep_native=False)
    assert model.native is None
    assert not any(k.startswith(("native.", "bn.", "linear.", "cls_head.")) for k in model.state_dict())
