"""The rotation head: the native embedding under a trained rotation, plus trained extra dims;
checkpoints hold the linear head it equals. And the AAM class weights that start at speaker means."""

import pytest
import torch
import torch.nn.functional as F

from mrl_dist.losses import MatryoshkaAAMLoss
from mrl_dist.models import ReDimNetMRL, collect_pooled
from mrl_dist.models.heads import MatryoshkaHead
from mrl_dist.train.class_init import class_mean_embeddings, set_class_weights

torch.manual_seed(0)
WAVES = [torch.randn(8, 12000) for _ in range(4)]
WAVE = torch.randn(3, 16000)


@pytest.fixture()
def rotation_model(pretrained):
    pooled = collect_pooled(pretrained, WAVES, max_batches=4)
    return ReDimNetMRL.from_redimnet(
        pretrained, dims=[16, 64, 192, 256], head_init="pca", pooled_features=pooled, head_type="rotation"
    ).eval()


def _cosines(embedding):
    unit = F.normalize(embedding, dim=1)
    return unit @ unit.T


def test_the_rotation_head_starts_as_the_pca_linear_head(pretrained):
    pooled = collect_pooled(pretrained, WAVES, max_batches=4)
    linear = ReDimNetMRL.from_redimnet(pretrained, dims=[16, 64, 192, 256], head_init="pca", pooled_features=pooled)
    rotation = ReDimNetMRL.from_redimnet(
        pretrained, dims=[16, 64, 192, 256], head_init="pca", pooled_features=pooled, head_type="rotation"
    )
    with torch.no_grad():
        assert torch.allclose(linear.eval()(WAVE, dim=192), rotation.eval()(WAVE, dim=192), atol=1e-5)


def test_any_trained_rotation_keeps_the_native_prefix_scores_exactly(rotation_model, pretrained):
    with torch.no_grad():
        rotation_model.head.skew.normal_(0, 0.05)
        assert torch.allclose(_cosines(rotation_model(WAVE, dim=192)), _cosines(pretrained(WAVE)), atol=1e-5)
        rotation = rotation_model.head.rotation()
        assert torch.allclose(rotation @ rotation.T, torch.eye(192), atol=1e-5)


def test_only_the_rotation_and_the_extra_dims_train(rotation_model):
    trained = {name for name, p in rotation_model.head.named_parameters() if p.requires_grad}
    assert trained == {"skew"}  # the extra dims stay zero unless train_extra_dims
    rotation_model(WAVE).square().sum().backward()
    assert rotation_model.head.skew.grad.abs().sum() > 0
    with torch.no_grad():
        assert torch.equal(rotation_model(WAVE)[:, 192:], torch.zeros(3, 64))


def test_extra_dims_train_when_asked(pretrained):
    model = ReDimNetMRL.from_redimnet(
        pretrained, dims=[64, 192, 256], head_init="pretrained", head_type="rotation", train_extra_dims=True
    )
    model(WAVE).square().sum().backward()
    assert model.head.extra.weight.requires_grad and model.head.extra.weight.grad.abs().sum() > 0


def test_checkpoints_hold_the_equal_linear_head(rotation_model, tmp_path):
    with torch.no_grad():
        rotation_model.head.skew.normal_(0, 0.05)
        rotation_model.head.extra.weight.normal_(0, 0.01)  # as if trained (train_extra_dims)
        expected = rotation_model(WAVE)
    rotation_model.save_checkpoint(tmp_path / "best.pt")
    loaded = ReDimNetMRL.from_checkpoint(tmp_path / "best.pt")
    assert isinstance(loaded.head, MatryoshkaHead)
    with torch.no_grad():
        assert torch.allclose(loaded(WAVE), expected, atol=1e-5)


def test_a_rotation_needs_a_pretrained_embedding(pretrained):
    with pytest.raises(ValueError, match="rotation"):
        ReDimNetMRL.from_redimnet(pretrained, dims=[64, 192], head_init="random", head_type="rotation")


def test_class_weights_start_at_each_speaker_s_mean_unit_embedding():
    embeddings = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    labels = torch.tensor([0, 0, 1, -1])  # -1: unlabelled, ignored
    means, counts = class_mean_embeddings(lambda x: x, [(embeddings, labels)], num_classes=3, device="cpu")
    assert counts.tolist() == [2, 1, 0]
    assert torch.allclose(means[:2], torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    loss = MatryoshkaAAMLoss([1, 2], num_classes=3, subcenters=2)
    untouched = loss.weight.view(3, 2, 2)[2].clone()
    assert set_class_weights(loss, means, counts) == 2
    view = loss.weight.view(3, 2, 2)
    assert torch.equal(view[0], torch.tensor([[1.0, 0.0], [1.0, 0.0]])) and torch.equal(view[2], untouched)
