"""AAM-softmax and its Matryoshka form, checked against hand-computed values."""

import math

import pytest
import torch
import torch.nn.functional as F

from mrl_dist.losses import AAMSoftmax, MatryoshkaAAMLoss, aam_logits, additive_angular_margin


def test_margin_adds_the_angle_in_the_normal_range():
    theta = torch.tensor([0.3, 1.0, 2.0])
    assert torch.allclose(additive_angular_margin(torch.cos(theta), 0.2), torch.cos(theta + 0.2), atol=1e-6)


def test_margin_stays_monotone_past_pi_minus_m():
    cosines = torch.linspace(-1, 1, 201)
    target = additive_angular_margin(cosines, 0.5)
    assert (target[1:] >= target[:-1]).all()
    near_pi = torch.tensor([math.cos(math.pi - 0.1)])
    assert torch.allclose(additive_angular_margin(near_pi, 0.5), near_pi - 0.5 * math.sin(0.5))


@pytest.mark.parametrize("cosine", [1.0, -1.0, 0.0])
def test_margin_gradient_is_finite_at_the_ends(cosine):
    x = torch.tensor([cosine], requires_grad=True)
    additive_angular_margin(x, 0.2).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_aam_loss_matches_hand_computation():
    # Two unit embeddings, two classes along the axes: target cosines are cos(0.1) and cos(0.2).
    embeddings = torch.tensor([[math.cos(0.1), math.sin(0.1)], [math.sin(0.2), math.cos(0.2)]])
    loss_fn = AAMSoftmax(2, 2, margin=0.3, scale=10.0)
    with torch.no_grad():
        loss_fn.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 3.0]]))  # norms must not matter
    labels = torch.tensor([0, 1])
    expected = []
    for target_angle, other_cos in [(0.1, math.sin(0.1)), (0.2, math.sin(0.2))]:
        target_logit, other_logit = 10 * math.cos(target_angle + 0.3), 10 * other_cos
        expected.append(-target_logit + math.log(math.exp(target_logit) + math.exp(other_logit)))
    assert loss_fn(embeddings, labels).item() == pytest.approx(sum(expected) / 2, rel=1e-5)


def test_subcentres_score_each_class_by_its_closest_centre():
    weights = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])  # 2 classes x 2 sub-centres
    logits, cosine = aam_logits(torch.tensor([[0.0, 1.0]]), weights, torch.tensor([1]), 0.0, 1.0, subcenters=2)
    assert torch.allclose(cosine, torch.tensor([[1.0, 0.0]]), atol=1e-6)


def test_matryoshka_tied_loss_uses_prefix_columns_renormalised():
    torch.manual_seed(0)
    embeddings, labels = torch.randn(6, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    loss_fn = MatryoshkaAAMLoss([4, 8], num_classes=3, margin=0.2, scale=30.0, dim_weights=[1.0, 3.0])
    total, stats = loss_fn(embeddings, labels)
    per_dim = []
    for dim in (4, 8):
        logits, _ = aam_logits(embeddings[:, :dim], loss_fn.weight[:, :dim], labels, 0.2, 30.0)
        per_dim.append(F.cross_entropy(logits, labels))
    assert total.item() == pytest.approx((per_dim[0] + 3 * per_dim[1]).item() / 4, rel=1e-6)
    assert stats["loss"][4].item() == pytest.approx(per_dim[0].item(), rel=1e-6)
    assert set(stats["accuracy"]) == {4, 8}


def test_matryoshka_untied_loss_has_one_class_matrix_per_dim():
    loss_fn = MatryoshkaAAMLoss([4, 8], num_classes=3, tied=False)
    assert [w.shape for w in loss_fn.weights] == [(3, 4), (3, 8)]
    total, _ = loss_fn({4: torch.randn(2, 4), 8: torch.randn(2, 8)}, torch.tensor([0, 2]))
    total.backward()
    assert all(w.grad is not None for w in loss_fn.weights)


def test_dim_weights_must_match_dims():
    with pytest.raises(ValueError, match="dim_weights: has 1 weights but model.mrl_dims has 2 dims"):
        MatryoshkaAAMLoss([4, 8], num_classes=3, dim_weights=[1.0])


def test_training_the_loss_separates_classes():
    torch.manual_seed(0)
    centres = torch.randn(4, 16)
    labels = torch.arange(4).repeat(16)
    data = centres[labels] + 0.3 * torch.randn(64, 16)
    loss_fn = MatryoshkaAAMLoss([8, 16], num_classes=4, margin=0.2, scale=16.0)
    optimiser = torch.optim.SGD(loss_fn.parameters(), lr=0.5)
    first = None
    for _ in range(50):
        loss, stats = loss_fn(data, labels)
        first = first if first is not None else loss.item()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert loss.item() < 0.5 * first
    assert stats["accuracy"][16].item() == 1.0
