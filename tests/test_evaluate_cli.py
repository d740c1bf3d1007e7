"""launch/evaluate.py end to end: demo corpus -> make_shards.py -> checkpoint -> EER table + DET plot."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("mrl_dist.data.pipeline", reason="make_eval_loader (mrl_dist/data/pipeline.py) is not available")

from mrl_dist.demo.corpus import make_demo_corpus  # noqa: E402
from mrl_dist.eval.cli import evaluate_main as main  # noqa: E402
from mrl_dist.models import ReDimNetMRL, build_preset  # noqa: E402
from mrl_dist.models.loading import save_official_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TABLE_HEADER = "| dim | EER % | minDCF 0.01 | minDCF 0.05 | threshold |"


@pytest.fixture(scope="module")
def shards(tmp_path_factory, make_shards) -> Path:
    """A `val` split of 2 speakers x 3 utterances packed with its trial list; the manifest path.

    `make_shards` is launch/make_shards.py loaded as a module (tests/conftest.py).
    """
    root = tmp_path_factory.mktemp("eval_cli")
    corpus = make_demo_corpus(root / "corpus", speakers=4, utterances=3, seed=0, test_fraction=0.5)
    make_shards.pack_split([corpus.test_dir], root / "shards", "val", trials=corpus.trials, workers=1, progress=False)
    return root / "shards" / "val.manifest.json"


@pytest.fixture(scope="module")
def mrl_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("run") / "best.pt"
    ReDimNetMRL.from_redimnet(build_preset("tiny"), head_init="pretrained").save_checkpoint(path)
    return path


def run_main(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.slow
def test_script_prints_a_row_per_dim_and_writes_the_det_plot_beside_the_checkpoint(shards, mrl_checkpoint):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "launch" / "evaluate.py"),
            "--checkpoint",
            str(mrl_checkpoint),
            "--data",
            str(shards),
            "--max-seconds",
            "1",
            "--batch-size",
            "4",
        ],
        capture_output=True,
        text=True,
        cwd=mrl_checkpoint.parent,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert TABLE_HEADER in lines
    rows = [line.split("|")[1].strip() for line in lines[lines.index(TABLE_HEADER) + 2 :] if line.startswith("|")]
    assert rows == ["64", "128", "192", "256", "native"]
    plot = mrl_checkpoint.with_name("best.det.png")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(plot) in result.stderr


def test_json_output_parses_and_reports_the_chosen_dims(shards, mrl_checkpoint, tmp_path, capsys):
    det = tmp_path / "plots" / "det.png"
    code, out, _ = run_main(
        capsys,
        "--checkpoint",
        mrl_checkpoint,
        "--data",
        shards,
        "--dims",
        64,
        128,
        "--max-seconds",
        1,
        "--det",
        det,
        "--json",
    )
    assert code == 0
    result = json.loads(out)
    assert list(result["eer"]) == ["64", "128", "native"]
    assert result["num_trials"] == 12 and result["det_plot"] == str(det) and det.is_file()
    assert result["trials"].endswith("val.trials.txt")  # the manifest's list, as --trials was not given


def test_official_redimnet_checkpoint_is_reported_as_native_only(shards, tmp_path, capsys):
    torch.manual_seed(0)
    checkpoint = save_official_checkpoint(build_preset("tiny").eval(), tmp_path / "tiny-official.pt")
    code, out, _ = run_main(
        capsys, "--checkpoint", checkpoint, "--data", shards, "--max-seconds", 1, "--no-det", "--json"
    )
    assert code == 0
    assert list(json.loads(out)["eer"]) == ["native"]


def test_without_matplotlib_the_table_is_printed_and_the_plot_skipped_with_a_note(
    shards, mrl_checkpoint, tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib...` fail
    code, out, err = run_main(
        capsys, "--checkpoint", mrl_checkpoint, "--data", shards, "--max-seconds", 1, "--det", tmp_path / "det.png"
    )
    assert code == 0
    assert TABLE_HEADER in out
    assert "matplotlib" in err and "skipped the DET plot" in err
    assert not (tmp_path / "det.png").exists()


def test_dims_beyond_the_head_are_refused_before_extraction(shards, mrl_checkpoint, capsys):
    code, _, err = run_main(capsys, "--checkpoint", mrl_checkpoint, "--data", shards, "--dims", 64, 512)
    assert code == 2
    assert "--dims [512]" in err and "1..256" in err


def test_data_without_a_trial_list_asks_for_trials(shards, mrl_checkpoint, capsys):
    code, _, err = run_main(capsys, "--checkpoint", mrl_checkpoint, "--data", str(shards.parent / "val-*.tar"))
    assert code == 2
    assert "pass --trials" in err


def test_ensemble_baseline_is_reported_beside_the_checkpoint(shards, mrl_checkpoint, tmp_path, capsys):
    from mrl_dist.models import build_preset, save_official_checkpoint

    teachers = []
    for name in ("small", "large"):
        teachers.append(save_official_checkpoint(build_preset("tiny").eval(), tmp_path / f"{name}.pt"))
    config = tmp_path / "distill.yaml"
    config.write_text(
        "training: {mode: distill}\n"
        "model: {mrl_dims: [64, 128, 192]}\n"
        f"distill: {{teachers: [{{source: {teachers[0]}, dims: [64]}}, {{source: {teachers[1]}, dims: [128, 192]}}]}}\n"
    )
    code, out, err = run_main(
        capsys,
        "--checkpoint",
        str(mrl_checkpoint),
        "--data",
        str(shards),
        "--ensemble-config",
        str(config),
        "--json",
        "--no-det",
    )
    assert code == 0, err
    report = json.loads(out)
    assert {"ensemble@64", "ensemble@128", "ensemble@192"} <= set(report["eer"])
    assert {"64", "128", "192", "256"} <= set(report["eer"])
    assert set(report["min_dcf"]["0.01"]) == set(report["eer"])
