"""Export: the exportable front-end equals MelFrontend, exported files equal PyTorch, torch.hub loads.

Models are the small random `tiny` presets written as checkpoint files, as a user's would be.
"""

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mrl_dist.export.cli import export_main
from mrl_dist.export.convert import export_model, load_runner, verify_export
from mrl_dist.export.frontend import ExportableMelFrontend, reflect_pad, with_exportable_frontend
from mrl_dist.export.model import ExportError, build_export, reference_embedding
from mrl_dist.models import ReDimNetMRL, build_preset, load_pretrained, save_official_checkpoint
from mrl_dist.models.frontend import MelFrontend
from mrl_dist.tools.bench_inference import randomise_batchnorms

REPO = Path(__file__).resolve().parents[1]
FRONTEND_TOLERANCE = 1e-5
EXPORT_TOLERANCE = 1e-4
LENGTHS = (257, 400, 4001, 16000, 16001)  # the shortest stft reflects, odd and even, a hop multiple and not
CHECK_SHAPES = [(batch, samples) for batch in (1, 3) for samples in (12000, 23457)]


def tilted_noise(batch: int, samples: int, seed: int = 0) -> torch.Tensor:
    """Noise with speech's spectral tilt (-6 dB/octave: white noise through 1 / (1 - 0.97 z^-1),
    which pre-emphasis undoes), so every mel band holds energy, as in speech."""
    white = torch.randn(batch, 1, samples + 599, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    decay = (0.97 ** torch.arange(600, dtype=torch.float64)).flip(0)[None, None]
    wave = F.conv1d(white, decay).squeeze(1)
    return (0.1 * wave / wave.std()).float()


def waves(batch: int, samples: int, seed: int = 0) -> torch.Tensor:
    return 0.1 * torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed + 7 * batch + samples))


def randomise_batchnorms_of(model):
    randomise_batchnorms(model, seed=1)
    return model.eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Checkpoint files: an MRL one on `tiny` (dims 32/64/192) and official ones of `tiny` and
    `redimnet2-tiny`, random weights with random BatchNorm statistics."""
    folder = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    mrl = ReDimNetMRL.from_redimnet(build_preset("tiny").eval(), dims=[32, 64, 192], head_init="random")
    randomise_batchnorms(mrl)
    mrl.save_checkpoint(folder / "mrl-tiny.pt")
    save_official_checkpoint(randomise_batchnorms_of(build_preset("tiny")), folder / "tiny.pt")
    save_official_checkpoint(randomise_batchnorms_of(build_preset("redimnet2-tiny")), folder / "redimnet2-tiny.pt")
    return {"mrl": folder / "mrl-tiny.pt", "redimnet": folder / "tiny.pt", "redimnet2": folder / "redimnet2-tiny.pt"}


def assert_unit_rows(embedding: np.ndarray, dim: int, batch: int) -> None:
    assert embedding.shape == (batch, dim)
    assert np.allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-5)


# --- the front-end ----------------------------------------------------------------------------


def test_reflect_pad_equals_f_pad_reflect():
    wave = torch.randn(2, 300)
    for left, right in [(1, 0), (256, 256), (200, 199)]:
        assert torch.equal(reflect_pad(wave, left, right), F.pad(wave[:, None], (left, right), mode="reflect")[:, 0])


@pytest.mark.parametrize(
    "spec_params",
    [{}, {"norm_signal": True}, {"spec_norm": "mvn"}, {"spec_norm": "bn"}, {"do_preemph": False}],
    ids=lambda p: ",".join(map(str, p.items())) or "default",
)
def test_exportable_frontend_equals_melfrontend_within_1e_5(spec_params):
    # Within 1e-5 in (almost) every cell: the few exceptions are (frame, mel band) cells with
    # almost no energy (a 20-100 Hz band in a short frame), whose log float32 cannot resolve in
    # either implementation; MelFrontend's FFT itself misses the float64 value there by up to
    # ~1e-4. Over 20 seeds at most 0.014% of cells exceeded 1e-5 and none 3.4e-4; a wrong
    # window, padding or phase moves most cells by far more.
    reference = MelFrontend(n_mels=72, hop_length=160, **spec_params)
    randomise_batchnorms(reference)
    reference.eval()
    exportable = ExportableMelFrontend(reference)
    differences = []
    for index, samples in enumerate(LENGTHS):
        wave = tilted_noise(3, samples, seed=index)
        expected, got = reference(wave), exportable(wave)
        assert got.shape == expected.shape == (3, 72, samples // 160 + 1)
        differences.append((got - expected).abs().flatten())
    differences = torch.cat(differences)
    assert (differences > FRONTEND_TOLERANCE).double().mean() <= 1e-3
    assert differences.max() < 1e-3


def test_exportable_frontend_is_as_accurate_as_melfrontend_on_white_noise():
    # White noise leaves pre-emphasis little energy in the 20-100 Hz bands, where both float32
    # implementations round most: compare each with the same arithmetic in float64.
    reference = MelFrontend(n_mels=72, hop_length=160).eval()
    exportable = ExportableMelFrontend(reference)
    wave = torch.randn(2, 32000, generator=torch.Generator().manual_seed(3))
    exact = copy.deepcopy(reference).double().power_mel(wave.double()).add(1e-6).log()
    exact = exact - exact.mean(dim=-1, keepdim=True)

    def rms_error(mel: torch.Tensor) -> float:
        return (mel.double() - exact).square().mean().sqrt().item()

    assert rms_error(exportable(wave)) <= 2 * rms_error(reference(wave))


def test_with_exportable_frontend_copies_and_leaves_the_model_unchanged():
    model = build_preset("tiny").eval()
    swapped = with_exportable_frontend(model)
    assert isinstance(model.spec, MelFrontend) and isinstance(swapped.spec, ExportableMelFrontend)
    wave = tilted_noise(2, 16000)
    with torch.no_grad():
        assert (swapped(wave) - model(wave)).abs().max() < EXPORT_TOLERANCE


# --- ONNX and TorchScript ---------------------------------------------------------------------


@pytest.mark.slow
def test_export_cli_writes_an_onnx_file_of_an_mrl_checkpoint_that_matches_pytorch(checkpoints, tmp_path, capsys):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    output = tmp_path / "model-64.onnx"
    assert export_main(["--checkpoint", str(checkpoints["mrl"]), "--dim", "64", "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "MB" in printed and "OK" in printed
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    module, model, _ = build_export(checkpoints["mrl"], 64)
    for batch, samples in CHECK_SHAPES:
        wave = waves(batch, samples)
        got = session.run(None, {"wave": wave.numpy()})[0]
        assert_unit_rows(got, 64, batch)
        with torch.no_grad():
            assert np.abs(got - module(wave).numpy()).max() < EXPORT_TOLERANCE
        assert np.abs(got - reference_embedding(model, wave, 64).numpy()).max() < EXPORT_TOLERANCE


@pytest.mark.slow
def test_onnx_export_of_an_official_redimnet2_file_matches_pytorch(checkpoints, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    module, model, _ = build_export(checkpoints["redimnet2"], 128)
    path = export_model(module, tmp_path / "redimnet2-128.onnx", "onnx")
    assert verify_export(path, "onnx", module) < EXPORT_TOLERANCE
    run = load_runner(path, "onnx")
    for batch, samples in CHECK_SHAPES:
        wave = waves(batch, samples, seed=1)
        got = run(wave.numpy())
        assert_unit_rows(got, 128, batch)
        assert np.abs(got - reference_embedding(model, wave, 128).numpy()).max() < EXPORT_TOLERANCE


def test_legacy_onnx_exporter_also_matches_pytorch(checkpoints, tmp_path):
    pytest.importorskip("onnxruntime")
    module, _, _ = build_export(checkpoints["redimnet"], 192)
    path = export_model(module, tmp_path / "tiny.onnx", "onnx", exporter="legacy")
    assert verify_export(path, "onnx", module) < EXPORT_TOLERANCE


def test_torchscript_export_loads_with_jit_load_and_matches_at_other_shapes(checkpoints, tmp_path):
    module, model, _ = build_export(checkpoints["mrl"], 32)
    path = export_model(module, tmp_path / "model-32.ts.pt", "torchscript")
    loaded = torch.jit.load(str(path))
    for batch, samples in CHECK_SHAPES:
        wave = waves(batch, samples, seed=2)
        with torch.no_grad():
            got = loaded(wave)
        assert_unit_rows(got.numpy(), 32, batch)
        assert (got - reference_embedding(model, wave, 32)).abs().max() < EXPORT_TOLERANCE


def test_export_of_a_plain_model_keeps_the_native_embeddings_prefix(checkpoints):
    module, model, _ = build_export(checkpoints["redimnet"], 100)
    wave = waves(2, 16000)
    with torch.no_grad():
        native = model(wave)
        assert (module(wave) - F.normalize(native[:, :100], dim=1)).abs().max() < EXPORT_TOLERANCE


@pytest.mark.parametrize("kind, dim, expected", [("mrl", "100", "[32, 64, 192]"), ("redimnet", "193", "1..192")])
def test_a_dim_the_checkpoint_cannot_give_is_an_error_naming_it(checkpoints, tmp_path, capsys, kind, dim, expected):
    output = tmp_path / "never.onnx"
    assert export_main(["--checkpoint", str(checkpoints[kind]), "--dim", dim, "--output", str(output)]) == 2
    error = capsys.readouterr().err
    assert f"--dim {dim}" in error and expected in error
    assert not output.exists()


def test_ssrfnet_checkpoints_are_refused_naming_the_family(tmp_path):
    path = save_official_checkpoint(build_preset("ssrfnet-tiny").eval(), tmp_path / "ssrfnet-tiny.pt")
    with pytest.raises(ExportError, match="ssrfnet models cannot be exported"):
        build_export(path)


# --- torch.hub --------------------------------------------------------------------------------


def test_hub_redimnet_mrl_gives_the_dim_prefix_of_the_checkpoint(checkpoints):
    model = torch.hub.load(str(REPO), "redimnet_mrl", checkpoint=str(checkpoints["mrl"]), dim=64, source="local")
    reference = ReDimNetMRL.from_checkpoint(checkpoints["mrl"])
    wave = waves(2, 16000)
    assert not model.training
    with torch.no_grad():
        assert torch.equal(model(wave), reference(wave, 64))


def test_hub_redimnet_mrl_downloads_a_url_into_the_hub_cache(checkpoints, isolated_hub):
    model = torch.hub.load(str(REPO), "redimnet_mrl", checkpoint=checkpoints["mrl"].as_uri(), source="local")
    assert model(waves(1, 8000)).shape == (1, 192)
    assert [p.name.split("-", 1)[1] for p in isolated_hub.iterdir()] == ["mrl-tiny.pt"]


def test_hub_redimnet_mrl_refuses_a_dim_outside_the_checkpoints_dims(checkpoints):
    with pytest.raises(ValueError, match=r"dim=100: not one of this MRL checkpoint's dims \[32, 64, 192\]"):
        torch.hub.load(str(REPO), "redimnet_mrl", checkpoint=str(checkpoints["mrl"]), dim=100, source="local")


@pytest.mark.parametrize("kind", ["redimnet", "redimnet2"])
def test_hub_redimnet_loads_an_official_file_by_path(checkpoints, kind):
    model = torch.hub.load(str(REPO), "redimnet", name=str(checkpoints[kind]), source="local")
    wave = waves(2, 16000)
    with torch.no_grad():
        assert torch.equal(model(wave), load_pretrained(checkpoints[kind])(wave))


def test_hubconf_imports_mrl_dist_from_its_own_repository(checkpoints, tmp_path):
    # A fresh interpreter elsewhere, no PYTHONPATH: whichever checkout pip installed, torch.hub
    # must run the code beside hubconf.py (mrl_dist is imported only after torch.hub.load).
    script = (
        f"import torch\n"
        f"torch.hub.load({str(REPO)!r}, 'redimnet', name={str(checkpoints['redimnet'])!r}, source='local')\n"
        f"import mrl_dist.models.loading\n"
        f"print(mrl_dist.models.loading.__file__)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).resolve() == REPO / "mrl_dist" / "models" / "loading.py"
