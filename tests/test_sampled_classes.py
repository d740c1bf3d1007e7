"""loss.sampled_classes: the AAM loss over the batch's classes plus random others (partial-FC style)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mrl_dist.config import ConfigError, config_from_dict
from mrl_dist.losses import MatryoshkaAAMLoss, aam_logits, class_rows, sample_classes

CLASSES, SAMPLED = 50, 12
LABELS = torch.tensor([3, 41, 3, 7, 0, 49])


def test_sampled_columns_are_distinct_and_hold_every_class_of_the_batch():
    torch.manual_seed(0)
    for _ in range(20):
        classes, targets = sample_classes(LABELS, CLASSES, SAMPLED)
        assert classes.shape == (SAMPLED,) and len(set(classes.tolist())) == SAMPLED
        assert torch.equal(classes[targets], LABELS)  # every target column present, at its position
        assert 0 <= int(classes.min()) and int(classes.max()) < CLASSES


def test_negatives_are_drawn_from_every_other_class():
    torch.manual_seed(0)
    seen = set()
    for _ in range(200):
        seen.update(sample_classes(LABELS, CLASSES, SAMPLED)[0].tolist())
    assert seen == set(range(CLASSES))


def test_sampled_logits_equal_the_full_logits_on_the_sampled_columns():
    torch.manual_seed(0)
    embeddings, weights = torch.randn(len(LABELS), 16), torch.randn(CLASSES, 16)
    full, _ = aam_logits(embeddings, weights, LABELS, margin=0.2, scale=30.0)
    classes, targets = sample_classes(LABELS, CLASSES, SAMPLED)
    sampled, _ = aam_logits(embeddings, weights[classes], targets, margin=0.2, scale=30.0)
    assert torch.allclose(sampled, full[:, classes], atol=1e-5)


def test_the_margin_is_applied_to_the_target_column_only():
    torch.manual_seed(0)
    embeddings, weights = torch.randn(len(LABELS), 16), torch.randn(CLASSES, 16)
    classes, targets = sample_classes(LABELS, CLASSES, SAMPLED)
    with_margin, cosine = aam_logits(embeddings, weights[classes], targets, margin=0.3, scale=10.0)
    rows = torch.arange(len(LABELS))
    target_angle = torch.acos(cosine[rows, targets])
    assert torch.allclose(with_margin[rows, targets], 10.0 * torch.cos(target_angle + 0.3), atol=1e-4)
    others = torch.ones_like(cosine, dtype=torch.bool)
    others[rows, targets] = False
    assert torch.allclose(with_margin[others], 10.0 * cosine[others])


def test_subcentre_rows_of_a_class_stay_together():
    assert class_rows(torch.tensor([4, 0]), subcenters=3).tolist() == [12, 13, 14, 0, 1, 2]


@pytest.mark.parametrize("sampled", [CLASSES, CLASSES + 7])
def test_sampling_every_class_is_the_full_softmax(sampled):
    torch.manual_seed(0)
    full = MatryoshkaAAMLoss([8, 16], CLASSES, subcenters=2)
    covering = MatryoshkaAAMLoss([8, 16], CLASSES, subcenters=2, sampled_classes=sampled)
    covering.load_state_dict(full.state_dict())
    embeddings = torch.randn(len(LABELS), 16)
    assert covering.sampled_classes is None
    assert torch.equal(covering(embeddings, LABELS)[0], full(embeddings, LABELS)[0])


def test_the_sampled_loss_is_the_cross_entropy_over_the_drawn_columns_of_every_prefix():
    torch.manual_seed(0)
    loss_fn = MatryoshkaAAMLoss([8, 16], CLASSES, margin=0.2, scale=30.0, subcenters=2, sampled_classes=SAMPLED)
    embeddings = torch.randn(len(LABELS), 16)
    torch.manual_seed(1)
    total, stats = loss_fn(embeddings, LABELS)
    torch.manual_seed(1)  # the same draw again
    classes, targets = sample_classes(LABELS, CLASSES, SAMPLED)
    rows = class_rows(classes, 2)
    for dim in (8, 16):
        logits, _ = aam_logits(embeddings[:, :dim], loss_fn.weight[rows, :dim], targets, 0.2, 30.0, subcenters=2)
        assert stats["loss"][dim] == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-5)
    assert total.item() == pytest.approx((stats["loss"][8] + stats["loss"][16]).item() / 2, rel=1e-5)


def test_only_the_drawn_rows_of_the_class_matrix_get_a_gradient():
    torch.manual_seed(0)
    loss_fn = MatryoshkaAAMLoss([8, 16], CLASSES, sampled_classes=SAMPLED)
    embeddings = torch.randn(len(LABELS), 16)
    torch.manual_seed(1)
    loss_fn(embeddings, LABELS)[0].backward()
    torch.manual_seed(1)  # the same draw again
    classes, _ = sample_classes(LABELS, CLASSES, SAMPLED)
    touched = loss_fn.weight.grad.abs().sum(dim=1) > 0
    assert set(torch.nonzero(touched).flatten().tolist()) == set(classes.tolist())


def test_a_margin_set_between_steps_reaches_the_loss():
    torch.manual_seed(0)
    loss_fn = MatryoshkaAAMLoss([16], CLASSES, margin=0.0, sampled_classes=SAMPLED)
    embeddings = torch.randn(len(LABELS), 16)
    losses = []
    for margin in (0.0, 0.2):
        loss_fn.margin = margin  # what the trainer's margin warm-up does
        torch.manual_seed(1)
        losses.append(loss_fn(embeddings, LABELS)[0].item())
    assert losses[1] > losses[0] and float(loss_fn.margin_value) == pytest.approx(0.2)
    assert "margin_value" not in loss_fn.state_dict()  # checkpoints are unchanged


def test_fewer_sampled_classes_than_the_batch_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"loss.sampled_classes.*training.batch_size 128"):
        config_from_dict({"loss": {"sampled_classes": 64}, "training": {"batch_size": 128}})
