"""AS-norm is exact against a brute-force formula, evaluate compares checkpoints on one table,
and on the demo corpus AS-norm does not raise the EER (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mrl_dist.data.trials import Trial
from mrl_dist.eval.score_norm import as_norm, normalise_all, speaker_cohort


def brute_force_as_norm(score, enroll, test, cohort, top):
    def stats(vector):
        cohort_scores = sorted((float(vector @ c) for c in cohort), reverse=True)[:top]
        return np.mean(cohort_scores), np.std(cohort_scores)

    (mu_e, sd_e), (mu_t, sd_t) = stats(enroll), stats(test)
    return 0.5 * ((score - mu_e) / sd_e + (score - mu_t) / sd_t)


def unit(rows):
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def test_as_norm_equals_the_brute_force_formula():
    rng = np.random.default_rng(0)
    keys = [f"id{s:02d}/v/{u}" for s in range(4) for u in range(3)]
    embeddings = {k: {"mrl": rng.standard_normal(16).astype(np.float32)} for k in keys}
    cohort_embeddings = {
        f"c{s:02d}/v/{u}": {"mrl": rng.standard_normal(16).astype(np.float32)} for s in range(7) for u in range(2)
    }
    trials = [Trial(int(a[:4] == b[:4]), a + ".wav", b + ".wav") for a, b in zip(keys, keys[1:] + keys[:1])]
    for name, dim in (("8", 8), ("16", 16)):
        vectors = {k: unit(v["mrl"][:dim].astype(np.float64)) for k, v in embeddings.items()}
        raw = np.array([vectors[t.enroll[:-4]] @ vectors[t.test[:-4]] for t in trials])
        cohort = speaker_cohort(cohort_embeddings, name)
        assert cohort.shape == (7, dim) and np.allclose(np.linalg.norm(cohort, axis=1), 1)
        ours = as_norm(raw, trials, embeddings, cohort, name, top=4)
        expected = [
            brute_force_as_norm(s, vectors[t.enroll[:-4]], vectors[t.test[:-4]], cohort, 4) for s, t in zip(raw, trials)
        ]
        assert np.allclose(ours, expected, atol=1e-12)
    assert set(normalise_all({"8": raw, "16": raw}, trials, embeddings, cohort_embeddings, top=300)) == {"8", "16"}


def test_a_cohort_speaker_is_the_mean_of_its_normalised_utterances():
    a, b = np.array([3.0, 0.0]), np.array([0.0, 1.0])
    cohort = speaker_cohort({"s/v/1": {"mrl": a}, "s/v/2": {"mrl": b}}, "2")
    assert np.allclose(cohort, [[np.sqrt(0.5), np.sqrt(0.5)]])


# ---------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def shards(tmp_path_factory, make_shards):
    from mrl_dist.demo.corpus import make_demo_corpus

    root = tmp_path_factory.mktemp("asnorm")
    corpus = make_demo_corpus(root / "corpus", speakers=8, utterances=3, seed=0, test_fraction=0.5)
    make_shards.pack_split([corpus.test_dir], root / "shards", "val", trials=corpus.trials, workers=1, progress=False)
    make_shards.pack_split([corpus.train_dir], root / "shards", "train", workers=1, progress=False)
    return root / "shards"


def test_two_checkpoints_share_one_table_one_det_plot_and_asnorm_rows(shards, tmp_path, capsys):
    from mrl_dist.eval.cli import evaluate_main
    from mrl_dist.models import ReDimNetMRL, build_preset, save_official_checkpoint

    torch.manual_seed(0)
    (tmp_path / "runA").mkdir()
    ReDimNetMRL.from_redimnet(build_preset("tiny"), dims=[32, 64, 192], head_init="pretrained").save_checkpoint(
        tmp_path / "runA" / "best.pt"
    )
    save_official_checkpoint(build_preset("tiny"), tmp_path / "plain.pt")
    code = evaluate_main(
        [
            "--checkpoint",
            str(tmp_path / "runA"),
            "--checkpoint",
            str(tmp_path / "plain.pt"),
            "--data",
            str(shards / "val.manifest.json"),
            "--asnorm-cohort",
            str(shards / "train.manifest.json"),
            "--asnorm-top",
            "3",
            "--det",
            str(tmp_path / "both.png"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    header = next(line for line in out.splitlines() if line.startswith("| dim"))
    assert "runA EER %" in header and "plain EER %" in header
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert {"32", "64", "192", "native", "asnorm@32", "asnorm@native"} <= set(rows)
    assert rows["32"].rstrip(" |").endswith("- | -")  # the plain model has no 32-D embedding
    assert (tmp_path / "both.png").is_file()

    code = evaluate_main(
        [
            "--checkpoint",
            str(tmp_path / "runA"),
            "--checkpoint",
            str(tmp_path / "plain.pt"),
            "--data",
            str(shards / "val.manifest.json"),
            "--json",
            "--no-det",
        ]
    )
    result = json.loads(capsys.readouterr().out)
    assert [c["label"] for c in result["checkpoints"]] == ["runA", "plain"]
    assert result["checkpoints"][0]["num_trials"] == result["checkpoints"][1]["num_trials"]


@pytest.mark.slow
def test_asnorm_does_not_raise_the_eer_on_the_demo_corpus(tmp_path):
    from mrl_dist.config import config_from_dict
    from mrl_dist.demo.run import demo_config, prepare_demo_shards
    from mrl_dist.eval.cli import evaluate_main
    from mrl_dist.train import train

    shards = prepare_demo_shards(tmp_path, speakers=40, utterances=20, seed=0)
    run = tmp_path / "classifier"
    # 50 steps (the demo runs 150): a trained but imperfect backbone (native EER ~8.6% here, 3,800
    # trials) is what AS-norm must not hurt; the longer run proved nothing more and took 3x as long.
    train(config_from_dict(demo_config(run, shards, "classifier", 50, "tiny")))
    out = tmp_path / "report.json"
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert (
            evaluate_main(
                [
                    "--checkpoint",
                    str(run / "best.pt"),
                    "--data",
                    str(shards / "val.manifest.json"),
                    "--asnorm-cohort",
                    str(shards / "train.manifest.json"),
                    "--json",
                    "--no-det",
                ]
            )
            == 0
        )
    report = json.loads(buffer.getvalue())
    out.write_text(json.dumps(report["eer"]))
    assert report["eer"]["asnorm@native"] <= report["eer"]["native"], report["eer"]
