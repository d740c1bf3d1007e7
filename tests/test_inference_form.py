"""The trunk's inference form (`mrl_dist.models.inference`) equals the plain eval form, leaves the
model it was made from alone, keeps the evaluation interface and still matches the official outputs."""

import copy

import pytest
import torch
from torch import nn

from mrl_dist.eval.extract import available_heads, embed_batch, extraction_style
from mrl_dist.models import ReDimNetMRL, build_preset, load_pretrained
from mrl_dist.models.inference import (
    inference_context,
    inference_form,
    is_inference_form,
    unfolded_batchnorms,
)

from fixtures_path import MICRO_REDIMNET, fixture_file

TOLERANCE = 1e-5
BATCH_SIZES = (1, 3)
NUM_SAMPLES = (8000, 20959)  # 0.5 s and an odd ~1.3 s


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread here (restored after): these small models gain nothing from two, and
    on a shared 2-core machine two threads wait on each other whenever another job holds a core."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def randomise_batchnorms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random running statistics and affine parameters in every BatchNorm: folding must be exact
    for all of them, not only for the identity a fresh BatchNorm is."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = module.num_features
                module.running_mean.copy_(0.5 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.25 + 1.5 * torch.rand(n, generator=generator))
                module.weight.copy_(1.0 + 0.5 * torch.randn(n, generator=generator))
                module.bias.copy_(0.3 * torch.randn(n, generator=generator))
    return model


def make_model(preset: str, kind: str, **overrides) -> nn.Module:
    torch.manual_seed(0)
    redimnet = randomise_batchnorms(build_preset(preset, **overrides))
    if kind == "mrl":
        return ReDimNetMRL.from_redimnet(redimnet, dims=[32, 64, 192], head_init="pretrained")
    return redimnet


def waves(batch: int, samples: int, seed: int = 0) -> torch.Tensor:
    return 0.1 * torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed + batch + samples))


def plain_outputs(model: nn.Module, wave: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every output the evaluation code reads, from the plain eval form under no_grad."""
    with torch.no_grad():
        return all_outputs(model, wave)


def all_outputs(model: nn.Module, wave: torch.Tensor) -> dict[str, torch.Tensor]:
    pooled = model.pooled(wave)
    outputs = {"pooled": pooled, "forward": model(wave)}
    if isinstance(model, ReDimNetMRL):
        outputs["head"] = model.head(pooled)
        outputs["native"] = model.native_embedding(pooled)
        outputs.update({f"forward_all[{d}]": e for d, e in model.forward_all(wave).items()})
    else:
        outputs["embed_pooled"] = model.embed_pooled(pooled)
    return outputs


def assert_form_matches_eval(model: nn.Module, form: nn.Module, wave: torch.Tensor) -> None:
    """Every output of the inference form (run in inference mode) equals the plain eval form's."""
    with inference_context():
        actual = all_outputs(form, wave)
    assert_close(plain_outputs(model, wave), actual)


def assert_close(expected: dict, actual: dict) -> None:
    assert expected.keys() == actual.keys()
    for name in expected:
        assert actual[name].shape == expected[name].shape, name
        difference = (actual[name] - expected[name]).abs().max().item()
        assert difference <= TOLERANCE, f"{name}: max |difference| {difference:.2e} > {TOLERANCE}"


@pytest.fixture(
    scope="module",
    params=[("tiny", "redimnet"), ("tiny", "mrl"), ("b0", "redimnet"), ("b0", "mrl")],
    ids=lambda p: "-".join(p),
)
def model_and_form(request):
    model = make_model(*request.param).eval()
    return model, inference_form(model)


@pytest.mark.parametrize("batch", BATCH_SIZES)
@pytest.mark.parametrize("samples", NUM_SAMPLES)
def test_inference_form_equals_eval_form_pooled_and_embeddings(model_and_form, batch, samples):
    model, form = model_and_form
    wave = waves(batch, samples)
    expected = plain_outputs(model, wave)
    with inference_context():
        actual = all_outputs(form, wave)
    assert_close(expected, actual)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(block_1d_type="att"),
        dict(block_1d_type="fc"),
        dict(block_1d_type="conv"),
        dict(block_2d_type="basic_resnet_fwse"),
        dict(block_2d_type="basic_resnet", group_divisor=None),
        dict(block_2d_type="convnext_like_relu", global_context_att=False),
        dict(stages_setup=[[1, 1, 2, [[3, 3]], 8], [2, 1, 3, [[3, 3]], 8]], out_channels=96, emb_bn=True),
    ],
    ids=["att", "fc", "conv", "resnet_fwse", "resnet_ungrouped", "convnext_relu_no_context", "expansion_mfa_emb_bn"],
)
def test_inference_form_equals_eval_form_for_every_block_type(overrides):
    model = make_model("tiny", "redimnet", **overrides).eval()
    form = inference_form(model)
    wave = waves(2, 12345)
    assert_form_matches_eval(model, form, wave)


def test_inference_form_without_channels_last_equals_eval_form():
    model = make_model("tiny", "mrl").eval()
    form = inference_form(model, channels_last=False)
    wave = waves(2, 16000)
    assert_form_matches_eval(model, form, wave)


def test_inference_form_front_end_gives_the_same_log_mels():
    model = build_preset("tiny", spec_params={"do_spec_aug": False, "norm_signal": True}).eval()
    form = inference_form(model)
    for wave in (waves(1, 8000), waves(3, 20959)):
        with torch.no_grad():
            expected = model.spec(wave)
        with inference_context():
            actual = form.spec(wave)
        assert (actual - expected).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("kind", ["redimnet", "mrl"])
def test_inference_form_leaves_the_training_model_unchanged(kind):
    model = make_model("tiny", kind).train()
    if kind == "mrl":
        model.freeze_backbone()  # frozen parts sit in eval mode inside a training model
    state = copy.deepcopy(model.state_dict())
    modes = {name: module.training for name, module in model.named_modules()}
    grads = {name: param.requires_grad for name, param in model.named_parameters()}
    inference_form(model)
    assert model.training
    assert {name: module.training for name, module in model.named_modules()} == modes
    assert {name: param.requires_grad for name, param in model.named_parameters()} == grads
    assert model.state_dict().keys() == state.keys()
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize("kind", ["redimnet", "mrl"])
def test_inference_form_requires_no_grad_and_stays_in_eval_mode(kind):
    model = make_model("tiny", kind).train()
    form = inference_form(model)
    assert is_inference_form(form) and not is_inference_form(model)
    assert not any(param.requires_grad for param in form.parameters())
    assert not any(module.training for module in form.modules())
    parent = nn.ModuleDict({"teacher": form, "student": nn.Linear(2, 2)}).train()  # as in distillation
    assert parent.training and parent["student"].training
    assert not any(module.training for module in form.modules())
    form.train()
    assert not any(module.training for module in form.modules())


def test_inference_form_folds_every_batchnorm_that_follows_a_conv_or_linear():
    # Left: the embedding layers' input BatchNorm (before a Linear) and ResidualBasicBlock.bn1,
    # which follows a ReLU; everything else is folded away.
    assert unfolded_batchnorms(inference_form(build_preset("b2"))) == ["bn"]
    mrl_form = inference_form(
        ReDimNetMRL.from_redimnet(build_preset("tiny"), dims=[32, 64, 192], head_init="pretrained")
    )
    assert unfolded_batchnorms(mrl_form) == ["native.bn", "head.bn"]
    b0_left = unfolded_batchnorms(inference_form(build_preset("b0")))
    assert b0_left[-1] == "bn" and all(name.endswith("conv_block.bn1") for name in b0_left[:-1])
    emb_bn = inference_form(build_preset("tiny", emb_bn=True, out_channels=64))
    assert unfolded_batchnorms(emb_bn) == ["bn"]


@pytest.mark.parametrize("kind", ["redimnet", "mrl"])
def test_inference_form_keeps_the_interface_the_evaluation_code_uses(kind):
    model = make_model("tiny", kind).eval()
    form = inference_form(model)
    assert type(form) is type(model)
    assert extraction_style(form) == extraction_style(model)
    assert available_heads(form) == available_heads(model)
    if kind == "mrl":
        assert form.dims == model.dims and form.trunk_frozen == model.trunk_frozen
    wave = waves(2, 16000)
    with torch.no_grad():
        expected = embed_batch(model, wave, available_heads(model) + ["pooled"])
    with inference_context():
        actual = embed_batch(form, wave, available_heads(model) + ["pooled"])
    assert_close(expected, actual)


def test_inference_form_keeps_trunk_frozen_of_the_model():
    model = make_model("tiny", "mrl")
    assert not inference_form(model).trunk_frozen
    model.freeze_backbone()
    assert inference_form(model).trunk_frozen


def test_inference_form_of_anything_else_is_a_type_error():
    with pytest.raises(TypeError, match="ReDimNet, ReDimNet2, SSRFNet or ReDimNetMRL"):
        inference_form(nn.Linear(2, 2))


@pytest.mark.parametrize("name", [*MICRO_REDIMNET, "b0", "b2"])  # b0, b2: the extended tier
def test_inference_form_reproduces_the_official_reference_outputs(name):
    model = load_pretrained(fixture_file(name))
    reference = torch.load(fixture_file(name, outputs=True), weights_only=True)
    form = inference_form(model)
    with inference_context():
        outputs = form.extract(reference["wave"])
        embedding = form(reference["wave"])
    with torch.no_grad():
        plain = model.extract(reference["wave"])
    for tensor in ("mel", "backbone", "pooled", "embedding"):
        assert (outputs[tensor] - reference[tensor]).abs().max().item() < 1e-4, tensor
        assert (outputs[tensor] - plain[tensor]).abs().max().item() <= TOLERANCE, tensor
    assert (embedding - reference["embedding"]).abs().max().item() < 1e-4


@pytest.mark.slow
def test_compiled_inference_form_equals_eval_form():
    model = make_model("tiny", "mrl").eval()
    form = inference_form(model, compile=True)
    wave = waves(2, 16000)
    assert_form_matches_eval(model, form, wave)
