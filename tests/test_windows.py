"""Long recordings in sliding windows (eval/windows.py, `launch/embed.py --window --hop`): where the
windows fall, one embedding per window equal to embedding that stretch alone, and the files written."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from calibration_setup import tiny_checkpoint
from conftest import tone, write_wav

from mrl_dist.data.audio import decode_file
from mrl_dist.eval.cli import embed_main
from mrl_dist.eval.windows import embed_windows, window_starts
from mrl_dist.models import ReDimNetMRL


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("windows") / "best.pt")


@pytest.fixture(scope="module")
def long_wav(tmp_path_factory):
    """5.5 s: three tones one after another, so windows over different parts differ."""
    parts = [tone(2.0, 16000, 180, seed=1), tone(2.0, 16000, 420, seed=2), tone(1.5, 16000, 900, seed=3)]
    return write_wav(tmp_path_factory.mktemp("long") / "meeting.wav", np.concatenate(parts), 16000)


def test_windows_step_by_the_hop_and_the_last_one_ends_at_the_end():
    assert window_starts(10, 4, 2) == [0, 2, 4, 6]  # the grid ends exactly at the end
    assert window_starts(11, 4, 2) == [0, 2, 4, 6, 7]  # a tail: one more window ending at 11
    assert window_starts(3, 4, 2) == [0]  # shorter than a window: the whole recording


def test_each_window_is_embedded_as_that_stretch_alone_for_every_dim(checkpoint, long_wav):
    model = ReDimNetMRL.from_checkpoint(checkpoint)
    wave = decode_file(long_wav).wave
    found = embed_windows(model, wave, 2.0, 1.5, [64, 256], batch_size=2)
    assert found.starts.tolist() == [0.0, 1.5, 3.0, 3.5] and found.ends.tolist() == [2.0, 3.5, 5.0, 5.5]
    for index, start in enumerate(found.starts):
        stretch = torch.from_numpy(wave[int(start * 16000) : int(start * 16000) + 32000])[None]
        with torch.no_grad():
            alone = model.forward_all(stretch)  # every dim from one pass
        for dim in (64, 256):
            row = found.embeddings[str(dim)][index]
            assert np.allclose(row, torch.nn.functional.normalize(alone[dim], dim=1)[0].numpy(), atol=1e-4)
    for dim in (64, 256):
        rows = found.embeddings[str(dim)]
        assert rows.shape == (4, dim) and np.allclose(np.linalg.norm(rows, axis=1), 1, atol=1e-5)
    assert not np.allclose(found.embeddings["64"][0], found.embeddings["64"][3], atol=1e-2)


def test_the_command_writes_rows_keys_and_times_and_skips_a_short_file(checkpoint, long_wav, tmp_path, capsys):
    short = write_wav(tmp_path / "short.wav", tone(0.3, 16000, 300), 16000)
    output = tmp_path / "out" / "windows.npy"
    argv = ["--checkpoint", checkpoint, "--input", long_wav, short, "--output", output, "--window", 2, "--hop", 1.5]
    assert embed_main([str(a) for a in [*argv, "--no-progress"]]) == 0
    rows = np.load(output)
    assert rows.shape == (4, 256) and rows.dtype == np.float32
    keys = output.with_suffix(".keys.txt").read_text().split()
    assert keys == ["meeting@0.00-2.00", "meeting@1.50-3.50", "meeting@3.00-5.00", "meeting@3.50-5.50"]
    lines = output.with_suffix(".windows.tsv").read_text().splitlines()
    assert lines[0] == "key\tstart\tend" and lines[-1] == "meeting\t3.500\t5.500"
    err = capsys.readouterr().err
    assert "short.wav: 0.30 s long; the minimum is 0.50 s" in err and "1 of 2 files skipped" in err


def test_a_hop_without_a_window_is_a_usage_error(checkpoint, long_wav, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        embed_main(
            [
                "--checkpoint",
                str(checkpoint),
                "--input",
                str(long_wav),
                "--output",
                str(tmp_path / "o.npy"),
                "--hop",
                "1",
            ]
        )
    assert exit_info.value.code == 2
