"""launch/embed.py: every audio file of the inputs becomes one normalised dim-D row, keyed like
VoxCeleb trials; a bad file is reported and counted, never silently dropped."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import aac_available, tone, write_wav

from mrl_dist.data.audio import decode_file
from mrl_dist.eval.cli import embed_main
from mrl_dist.models import ReDimNetMRL, build_preset
from mrl_dist.tools.m4a import write_m4a


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("run") / "best.pt"
    ReDimNetMRL.from_redimnet(build_preset("tiny"), dims=[32, 64, 192], head_init="pretrained").save_checkpoint(path)
    return path


@pytest.fixture
def audio(tmp_path):
    root = tmp_path / "audio"
    write_wav(root / "id001" / "v1" / "00001.wav", tone(1.2, 16000, 220), 16000)
    write_wav(root / "id001" / "v1" / "00002.wav", tone(2.0, 44100, 330, channels=2), 44100)
    write_wav(root / "id002" / "v9" / "00001.wav", tone(0.8, 8000, 440), 8000)
    (root / "id002" / "v9" / "00002.wav").write_bytes(b"RIFF not really a wav")
    if aac_available():
        write_m4a(root / "id003" / "v1" / "00001.m4a", tone(1.5, 16000, 500)[:, None], 16000)
    return root


def test_every_file_is_one_normalised_row_keyed_by_its_relative_path(checkpoint, audio, tmp_path, capsys):
    output = tmp_path / "out" / "emb.npy"
    assert (
        embed_main(
            [
                "--checkpoint",
                str(checkpoint),
                "--dim",
                "64",
                "--input",
                str(audio),
                "--output",
                str(output),
                "--no-progress",
            ]
        )
        == 0
    )
    embeddings = np.load(output)
    keys = (tmp_path / "out" / "emb.keys.txt").read_text().split()
    expected = ["id001/v1/00001", "id001/v1/00002", "id002/v9/00001"] + (["id003/v1/00001"] if aac_available() else [])
    assert keys == expected and embeddings.shape == (len(expected), 64) and embeddings.dtype == np.float32
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-5)
    err = capsys.readouterr().err
    assert "skipped" in err and "00002.wav" in err and f"1 of {len(expected) + 1} files skipped" in err
    model = ReDimNetMRL.from_checkpoint(checkpoint)
    with torch.no_grad():
        direct = model(torch.from_numpy(decode_file(audio / "id001" / "v1" / "00001.wav").wave)[None], dim=64)
    assert np.allclose(embeddings[0], torch.nn.functional.normalize(direct, dim=1)[0].numpy(), atol=1e-4)


def test_a_dim_beyond_the_model_is_an_error_naming_it(checkpoint, audio, tmp_path, capsys):
    assert (
        embed_main(
            [
                "--checkpoint",
                str(checkpoint),
                "--dim",
                "999",
                "--input",
                str(audio),
                "--output",
                str(tmp_path / "e.npy"),
            ]
        )
        == 2
    )
    assert "--dim 999" in capsys.readouterr().err


def test_a_missing_input_is_an_error_naming_it(checkpoint, tmp_path, capsys):
    assert (
        embed_main(
            ["--checkpoint", str(checkpoint), "--input", str(tmp_path / "nowhere"), "--output", str(tmp_path / "e.npy")]
        )
        == 2
    )
    assert "nowhere" in capsys.readouterr().err
