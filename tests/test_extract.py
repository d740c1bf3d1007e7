"""Embedding extraction and trial scoring: one pass for all dims, prefixes per dim, no padding leaks."""

import numpy as np
import pytest
import torch
from torch import nn

from mrl_dist.data.trials import Trial
from mrl_dist.eval.extract import (
    MissingEmbeddingError,
    evaluate_model,
    extract_embeddings,
    length_groups,
    score_trials,
)
from mrl_dist.eval.metrics import cosine_scores
from mrl_dist.models import ReDimNetMRL, build_preset

SECOND = 16_000
ATOL = 1e-5


def tiny_mrl(keep_native: bool = True) -> ReDimNetMRL:
    torch.manual_seed(0)
    model = ReDimNetMRL.from_redimnet(build_preset("tiny"), head_init="pretrained")
    if not keep_native:
        model.native = None
    return model.eval()


@pytest.fixture(scope="module")
def mrl_model():
    return tiny_mrl()


def padded_batch(waves: dict[str, torch.Tensor]) -> dict:
    """The loader's contract: {"wave": [B, T_max] zero-padded, "lengths": [B], "key": B str}."""
    width = max(len(w) for w in waves.values())
    wave = torch.zeros(len(waves), width)
    for row, w in enumerate(waves.values()):
        wave[row, : len(w)] = w
    return {"wave": wave, "lengths": torch.tensor([len(w) for w in waves.values()]), "key": list(waves)}


def alone(model, wave: torch.Tensor) -> dict[str, np.ndarray]:
    """The embeddings of one utterance in a batch of its own."""
    return extract_embeddings(model, [padded_batch({"x": wave})])["x"]


def random_waves(count: int, seconds: float = 0.5, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        f"id{i % 3:05d}/v{i:03d}/00001": 0.1 * torch.randn(int(seconds * SECOND), generator=generator)
        for i in range(count)
    }


# ------------------------------------------------------------------------------ length_groups
def test_length_groups_share_a_pass_only_within_tolerance_of_the_longest():
    groups = length_groups([100, 50, 91, 95, 80, 50], crop_tolerance=0.1)
    assert groups == [([0, 3, 2], 91), ([4], 80), ([1, 5], 50)]


def test_length_groups_with_zero_tolerance_share_a_pass_only_for_equal_lengths():
    assert length_groups([10, 9, 10], crop_tolerance=0.0) == [([0, 2], 10), ([1], 9)]


# ------------------------------------------------------------------------------ extraction
def test_one_backbone_pass_gives_full_mrl_vector_and_native_embedding(mrl_model, monkeypatch):
    waves = random_waves(3)
    calls = []
    original = mrl_model.pooled
    monkeypatch.setattr(mrl_model, "pooled", lambda wave: calls.append(wave.shape) or original(wave))
    embeddings = extract_embeddings(mrl_model, [padded_batch(waves)])
    assert calls == [(3, len(next(iter(waves.values()))))]
    batch = torch.stack(list(waves.values()))
    with torch.no_grad():
        expected_mrl = mrl_model(batch)
        expected_native = mrl_model.native_embedding(original(batch))
    for row, key in enumerate(waves):
        assert set(embeddings[key]) == {"mrl", "native"}
        assert embeddings[key]["mrl"].shape == (256,) and embeddings[key]["native"].shape == (192,)
        np.testing.assert_allclose(embeddings[key]["mrl"], expected_mrl[row].numpy(), atol=ATOL)
        np.testing.assert_allclose(embeddings[key]["native"], expected_native[row].numpy(), atol=ATOL)


def test_native_embedding_is_extracted_only_when_the_model_keeps_one():
    embeddings = extract_embeddings(tiny_mrl(keep_native=False), [padded_batch(random_waves(2))])
    assert all(set(entry) == {"mrl"} for entry in embeddings.values())


def test_heads_keep_only_the_named_kinds_and_unavailable_ones_are_refused(mrl_model):
    embeddings = extract_embeddings(mrl_model, [padded_batch(random_waves(1))], heads=["mrl"])
    assert all(set(entry) == {"mrl"} for entry in embeddings.values())
    with pytest.raises(ValueError, match=r"heads \['native'\] not available"):
        extract_embeddings(tiny_mrl(keep_native=False), [], heads=["native"])


def test_plain_redimnet_gives_only_the_native_embedding():
    torch.manual_seed(0)
    redimnet = build_preset("tiny").eval()
    waves = random_waves(2)
    embeddings = extract_embeddings(redimnet, [padded_batch(waves)])
    with torch.no_grad():
        expected = redimnet(torch.stack(list(waves.values())))
    for row, key in enumerate(waves):
        assert set(embeddings[key]) == {"native"}
        np.testing.assert_allclose(embeddings[key]["native"], expected[row].numpy(), atol=ATOL)


class PerDimModels(nn.Module):
    """Stand-in for the ensemble baseline: a separate embedding per dim; records how it was called."""

    dims = [2, 4]

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(1, 4)
        self.seen = []

    def forward_all(self, wave):
        self.seen.append((self.training, torch.is_grad_enabled()))
        feature = wave.mean(dim=1, keepdim=True)
        return {2: torch.cat([feature, -feature], 1), 4: self.proj(feature)}


def test_forward_all_model_gives_one_embedding_per_dim_in_eval_mode_without_grad():
    model = PerDimModels().train()
    embeddings = extract_embeddings(model, [padded_batch(random_waves(2))])
    assert all(set(e) == {"2", "4"} and e["2"].shape == (2,) and e["4"].shape == (4,) for e in embeddings.values())
    assert model.seen == [(False, False)]
    assert model.training


def test_previous_train_and_eval_modes_are_restored_per_submodule():
    model = tiny_mrl().train()
    model.freeze_backbone()  # frozen parts stay in eval mode while the head trains
    before = {name: module.training for name, module in model.named_modules()}
    extract_embeddings(model, [padded_batch(random_waves(1))])
    assert {name: module.training for name, module in model.named_modules()} == before
    assert model.training and not model.backbone.training


# ------------------------------------------------------------------------------ padding
def test_zero_padding_would_change_an_embedding(mrl_model):
    # Why extraction crops: the model itself is not blind to trailing zeros.
    wave = random_waves(1)["id00000/v000/00001"]
    padded = torch.cat([wave, torch.zeros(len(wave) // 2)])
    assert not np.allclose(alone(mrl_model, wave)["mrl"], alone(mrl_model, padded)["mrl"], atol=1e-3)


def test_embedding_ignores_batch_mates_whose_length_differs_by_more_than_the_tolerance(mrl_model):
    waves = random_waves(3)
    x, longer, shorter = waves.values()
    reference = alone(mrl_model, x)
    for mate in (torch.cat([longer, longer]), shorter[: len(x) // 2]):
        batch = padded_batch({"x": x, "mate": mate})
        embedding = extract_embeddings(mrl_model, [batch])["x"]
        for kind in ("mrl", "native"):
            np.testing.assert_allclose(embedding[kind], reference[kind], atol=ATOL)


def test_batch_mate_within_tolerance_crops_an_utterance_to_the_shorter_length(mrl_model):
    waves = random_waves(2)
    x, mate = waves.values()
    crop = int(0.95 * len(x))
    batch = padded_batch({"x": x, "mate": mate[:crop]})
    cropped = extract_embeddings(mrl_model, [batch])["x"]
    np.testing.assert_allclose(cropped["mrl"], alone(mrl_model, x[:crop])["mrl"], atol=ATOL)
    exact = extract_embeddings(mrl_model, [batch], crop_tolerance=0.0)["x"]
    np.testing.assert_allclose(exact["mrl"], alone(mrl_model, x)["mrl"], atol=ATOL)


def test_length_outside_the_padded_width_is_an_error_naming_the_key(mrl_model):
    batch = padded_batch(random_waves(1))
    batch["lengths"] = torch.tensor([batch["wave"].shape[1] + 1])
    with pytest.raises(ValueError, match="id00000/v000/00001"):
        extract_embeddings(mrl_model, [batch])


def test_an_utterance_in_two_batches_is_an_error_naming_it(mrl_model):
    batch = padded_batch(random_waves(1))
    with pytest.raises(ValueError, match="'id00000/v000/00001' appears twice"):
        extract_embeddings(mrl_model, [batch, batch])


# ------------------------------------------------------------------------------ scoring
def test_dim_d_score_is_the_cosine_of_the_first_d_coordinates():
    rng = np.random.default_rng(0)
    shared = rng.normal(size=64)
    embeddings = {
        "s1/v/1": {"mrl": np.r_[shared, rng.normal(size=64)]},
        "s1/v/2": {"mrl": np.r_[3.0 * shared, rng.normal(size=64)]},  # scale must not matter
        "s2/v/1": {"mrl": rng.normal(size=128)},
    }
    trials = [Trial(1, "s1/v/1.wav", "s1/v/2.wav"), Trial(0, "s1/v/1.wav", "s2/v/1.wav")]
    scores = score_trials(embeddings, trials, dims=[64, 128])
    assert list(scores) == ["64", "128"]
    assert scores["64"][0] == pytest.approx(1.0)
    for dim in (64, 128):
        first = np.stack([embeddings["s1/v/1"]["mrl"][:dim]] * 2)
        second = np.stack([embeddings["s1/v/2"]["mrl"][:dim], embeddings["s2/v/1"]["mrl"][:dim]])
        np.testing.assert_allclose(scores[str(dim)], cosine_scores(first, second), atol=1e-12)


def test_native_scores_come_last_and_only_when_every_utterance_has_one():
    vector = {"mrl": np.ones(4), "native": np.ones(3)}
    trials = [Trial(1, "a", "b")]
    assert list(score_trials({"a": vector, "b": vector}, trials, dims=[2, 4])) == ["2", "4", "native"]
    assert list(score_trials({"a": {"mrl": np.ones(4)}, "b": {"mrl": np.ones(4)}}, trials, dims=[2])) == ["2"]


def test_per_dim_embeddings_are_scored_as_they_are_not_as_prefixes():
    embeddings = {
        "a": {"2": np.array([1.0, 0.0]), "4": np.array([1.0, 0, 0, 0])},
        "b": {"2": np.array([0.0, 1.0]), "4": np.array([1.0, 0, 0, 0])},
    }
    scores = score_trials(embeddings, [Trial(0, "a", "b")], dims=[2, 4])
    assert scores["2"][0] == pytest.approx(0.0) and scores["4"][0] == pytest.approx(1.0)


def test_a_trial_utterance_without_embedding_is_an_error_naming_it():
    embeddings = {"s1/v/1": {"mrl": np.ones(4)}}
    with pytest.raises(MissingEmbeddingError, match=r"1 of 2 .*'s2/v/9'"):
        score_trials(embeddings, [Trial(0, "s1/v/1.wav", "s2/v/9.wav")], dims=[4])


def test_dim_beyond_the_mrl_vector_is_an_error():
    embeddings = {"a": {"mrl": np.ones(4)}, "b": {"mrl": np.ones(4)}}
    with pytest.raises(ValueError, match="dim 8 exceeds the 4-D MRL embedding"):
        score_trials(embeddings, [Trial(1, "a", "b")], dims=[8])


# ------------------------------------------------------------------------------ evaluate_model
def test_evaluate_model_reports_every_mrl_dim_and_native(mrl_model):
    waves = random_waves(6)
    keys = list(waves)
    trials = [
        Trial(int(a.split("/")[0] == b.split("/")[0]), a + ".wav", b + ".wav")
        for i, a in enumerate(keys)
        for b in keys[i + 1 :]
    ]
    batches = [padded_batch(dict(list(waves.items())[:4])), padded_batch(dict(list(waves.items())[4:]))]
    report, scores, labels = evaluate_model(mrl_model, batches, trials)
    assert list(report["eer"]) == ["64", "128", "192", "256", "native"]
    assert report["num_trials"] == len(trials) == len(labels) == len(scores["64"])
    assert labels.tolist() == [t.label for t in trials]
    # the pretrained head's 192-D prefix is the native embedding
    np.testing.assert_allclose(scores["192"], scores["native"], atol=1e-5)
