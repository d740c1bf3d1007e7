"""int8 ONNX: quantised copies of an exported file run, stay close to fp32, and say what stayed fp32.

The model is the random `tiny` ReDimNet under an MRL head (dims 32/64/192), exported with the
legacy exporter (2 s instead of 9 s for dynamo; quantisation does not depend on the exporter).
Calibration speech is the demo's synthetic voices, written as wav files and read back.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime.quantization", reason="the `export` extra (onnxruntime) is not installed")

import onnx  # noqa: E402

from mrl_dist.demo.corpus import make_demo_corpus  # noqa: E402
from mrl_dist.export.cli import bench_int8_main, export_main  # noqa: E402
from mrl_dist.export.convert import METADATA_KEY, example_wave, export_onnx  # noqa: E402
from mrl_dist.export.model import EmbeddingExport  # noqa: E402
from mrl_dist.export.quantize import EXCLUDED, front_end_nodes, int8_path, quantise_onnx  # noqa: E402
from mrl_dist.export.speech import calibration_waves  # noqa: E402
from mrl_dist.models import ReDimNetMRL, build_preset  # noqa: E402
from mrl_dist.tools.bench_inference import randomise_batchnorms  # noqa: E402

MIN_COSINE = 0.99  # loose: int8 embeddings of the same wave point the same way as fp32 ones


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = ReDimNetMRL.from_redimnet(build_preset("tiny").eval(), dims=[32, 64, 192], head_init="random")
    randomise_batchnorms(model)
    path = tmp_path_factory.mktemp("int8") / "mrl-tiny.pt"
    model.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def fp32_file(checkpoint) -> Path:
    model = ReDimNetMRL.from_checkpoint(checkpoint)
    return export_onnx(EmbeddingExport(model, 64), checkpoint.with_name("mrl-tiny-64.onnx"), exporter="legacy")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_demo_corpus(tmp_path_factory.mktemp("voices"), speakers=4, utterances=3, seed=0, test_fraction=0.5)


def speech_waves(corpus) -> list[np.ndarray]:
    return calibration_waves(corpus.train_dir, count=6, max_seconds=2.0)


def embeddings(path: Path, waves: list[np.ndarray]) -> np.ndarray:
    from mrl_dist.export.convert import load_runner

    run = load_runner(path, "onnx")
    return np.concatenate([run(wave[None, :]) for wave in waves])


def test_int8_path_sits_beside_the_fp32_file_and_names_the_mode():
    assert int8_path(Path("out/model-128.onnx"), "static") == Path("out/model-128.int8-static.onnx")


def test_static_quantisation_without_calibration_speech_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="calibration"):
        quantise_onnx(tmp_path / "missing.onnx", mode="static", calibration=[])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--int8", "static"], "--int8 static needs --int8-calibration"),
        (["--int8", "dynamic", "--format", "torchscript"], "--format onnx"),
        (["--int8-calibration", "cal.manifest.json"], "add static to --int8"),
    ],
)
def test_export_refuses_int8_options_that_do_not_fit(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        export_main(["--checkpoint", "x.pt", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_dynamic_int8_file_runs_any_batch_and_length_and_stays_close_to_fp32(fp32_file, corpus):
    report = quantise_onnx(fp32_file, mode="dynamic")
    waves = speech_waves(corpus)
    reference, quantised = embeddings(fp32_file, waves), embeddings(report.path, waves)
    assert quantised.shape == reference.shape == (len(waves), 64)
    assert (reference * quantised).sum(axis=1).min() > MIN_COSINE  # both are L2-normalised
    from mrl_dist.export.convert import load_runner

    batch = example_wave((3, 23457), seed=4).numpy()
    assert load_runner(report.path, "onnx")(batch).shape == (3, 64)


@pytest.mark.slow
def test_static_int8_calibrated_on_a_folder_of_speech_stays_close_to_fp32(fp32_file, corpus, tmp_path):
    calibration = speech_waves(corpus)
    report = quantise_onnx(fp32_file, tmp_path / "static.onnx", mode="static", calibration=calibration)
    assert report.calibration_waves == len(calibration) == 6
    test_waves = calibration_waves(corpus.test_dir, count=4, max_seconds=3.0)  # other speakers
    reference, quantised = embeddings(fp32_file, test_waves), embeddings(report.path, test_waves)
    assert (reference * quantised).sum(axis=1).min() > MIN_COSINE


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_report_lists_the_front_end_depthwise_convs_attention_and_embedding_layer_as_fp32(fp32_file, corpus, mode):
    report = quantise_onnx(fp32_file, mode=mode, calibration=speech_waves(corpus))
    assert set(report.kept_fp32) == {"front-end", "depthwise", "activations", "embedding"}
    assert report.kept_fp32["front-end"] == {"Conv": 2, "MatMul": 1}  # pre-emphasis, DFT; mel filterbank
    assert set(report.kept_fp32["depthwise"]) == {"Conv"}
    assert set(report.kept_fp32["activations"]) == {"MatMul"}
    assert report.kept_fp32["embedding"] == {"Gemm": 1}  # dynamic mode's Gemm-as-MatMul is followed too
    assert set(report.quantised) == {"Conv", "MatMul"}
    assert "LayerNormalization" in report.other_fp32 and "Softmax" in report.other_fp32
    text = "\n".join(report.lines())
    for reason in EXCLUDED.values():
        assert reason in text


@pytest.mark.slow
def test_front_end_nodes_end_at_the_log_of_the_mel_spectrogram(fp32_file):
    model = onnx.load(str(fp32_file))
    front = front_end_nodes(model)
    log_index = next(i for i, node in enumerate(model.graph.node) if node.op_type == "Log")
    assert model.graph.node[log_index].name in front
    assert all(i <= log_index for i, node in enumerate(model.graph.node) if node.name in front)


@pytest.mark.slow
def test_int8_file_carries_the_fp32_description_and_what_was_quantised(fp32_file):
    report = quantise_onnx(fp32_file, mode="dynamic")
    entries = {entry.key: entry.value for entry in onnx.load(str(report.path)).metadata_props}
    description = json.loads(entries[METADATA_KEY])
    assert description["dim"] == 64 and description["int8"]["mode"] == "dynamic"
    assert description["int8"]["kept_fp32"][EXCLUDED["front-end"]] == {"Conv": 2, "MatMul": 1}


@pytest.mark.slow
def test_export_cli_writes_int8_files_beside_the_fp32_one_and_logs_what_stayed_fp32(checkpoint, corpus, capsys):
    output = checkpoint.with_name("cli-64.onnx")
    argv = ["--checkpoint", str(checkpoint), "--dim", "64", "--onnx-exporter", "legacy", "--output", str(output)]
    argv += ["--int8", "dynamic", "static", "--int8-calibration", str(corpus.train_dir)]
    assert export_main(argv + ["--int8-calibration-count", "4"]) == 0
    out = capsys.readouterr().out
    for mode in ("dynamic", "static"):
        assert int8_path(output, mode).is_file()
        assert f"int8 ({mode}): {int8_path(output, mode)}" in out
    assert out.count("stayed fp32:") == 8  # four reasons per mode
    assert "min cosine to the fp32 file" in out


@pytest.mark.slow
def test_bench_int8_prints_eer_and_latency_of_both_files_on_the_same_trials(checkpoint, corpus, make_shards, capsys):
    shards = checkpoint.parent / "shards"
    make_shards.pack_split([corpus.test_dir], shards, "val", trials=corpus.trials, workers=1, progress=False)
    argv = ["--checkpoint", str(checkpoint), "--data", str(shards / "val.manifest.json"), "--dims", "64"]
    argv += ["--repeats", "2", "--warmup", "1", "--seconds", "1", "--onnx-exporter", "legacy"]
    assert bench_int8_main(argv) == 0
    out = capsys.readouterr().out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| 64 |")]
    assert len(rows) == 1 and rows[0][1].strip() == "int8-dynamic"
    eer_fp32, eer_int8, delta = (float(cell) for cell in rows[0][2:5])
    assert abs(eer_int8 - eer_fp32 - delta) < 0.011  # the change is int8 minus fp32, in points
    assert "onnxruntime" in out  # the machine line
