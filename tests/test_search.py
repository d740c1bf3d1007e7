"""MRL cascade search: an index of enrolments at every prefix, a short-prefix shortlist re-scored in full."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mrl_dist.search import exhaustive
from mrl_dist.search.bench import split_enrolment, synthetic_centres, synthetic_queries
from mrl_dist.search.cli import bench_search_main, search_main
from mrl_dist.search.enrol import enrol_embeddings, read_embedding_file
from mrl_dist.search.index import CascadeIndex, keys_path


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def exact_top(index_rows: np.ndarray, queries: np.ndarray, dim: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine top-k at `dim` by hand: both sides' prefixes normalised, a full sort."""
    scores = unit(queries[:, :dim].astype(np.float64)) @ unit(index_rows[:, :dim].astype(np.float64)).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


@pytest.fixture(scope="module")
def population() -> tuple[CascadeIndex, np.ndarray, np.ndarray]:
    """5,003 MRL-like speakers (not a multiple of the row group), 64 queries near known ones."""
    centres = synthetic_centres(5003, seed=0)
    queries, truth = synthetic_queries(centres, 64, noise=1.0, seed=1)
    return CascadeIndex(centres, [f"spk{i}" for i in range(len(centres))]), queries, truth


def test_prefixes_are_renormalised_exactly(population):
    index, _, _ = population
    for dim in index.dims:
        by_hand = unit(index.embeddings[:, :dim].astype(np.float64))
        assert np.allclose(index.prefix(dim), by_hand, atol=1e-6)


def test_brute_force_is_the_exact_top_n_at_every_dim(population):
    index, queries, _ = population
    for dim in (64, 256):
        rows, scores = index.search_brute(queries, 5, dim=dim)
        expected_rows, expected_scores = exact_top(index.embeddings, queries, dim, 5)
        assert np.array_equal(rows, expected_rows)
        assert np.allclose(scores, expected_scores, atol=1e-5)


def test_the_grouped_top_k_equals_a_full_sort_through_several_levels(population, monkeypatch):
    index, queries, _ = population
    monkeypatch.setattr(exhaustive, "COARSEST", 8)  # maxima of 626, 79, 10 and 2 groups: a 1M index's depth
    monkeypatch.setattr(exhaustive, "ROW_BLOCK", 96)  # several blocks per prepared chunk
    for k in (5, 100):  # from the 10 groups down, or (fewer than k above) from the 626
        rows, scores = index.search_brute(queries, k, dim=64)
        expected_rows, expected_scores = exact_top(index.embeddings, queries, 64, k)
        assert np.array_equal(np.sort(rows, axis=1), np.sort(expected_rows, axis=1))
        assert np.allclose(scores, expected_scores, atol=1e-5)


def test_cascade_with_every_row_shortlisted_is_brute_force(population):
    index, queries, _ = population
    rows, scores = index.search(queries, 5, first_dim=64, shortlist=len(index))
    brute_rows, brute_scores = index.search_brute(queries, 5)
    assert np.array_equal(rows, brute_rows) and np.allclose(scores, brute_scores, atol=1e-6)


def test_cascade_top1_equals_brute_force_on_an_easy_set(population):
    index, queries, truth = population
    cascade, _ = index.search(queries, 1, first_dim=64, shortlist=100)
    brute, _ = index.search_brute(queries, 1)
    assert np.array_equal(cascade[:, 0], brute[:, 0]) and np.array_equal(brute[:, 0], truth)


def test_a_bfloat16_scan_keeps_the_shortlist_and_scores_in_float32(population):
    index, queries, truth = population
    rows, scores = index.search(queries, 5, scan_dtype="bfloat16")
    exact_rows, exact_scores = index.search(queries, 5)
    assert np.array_equal(rows[:, 0], exact_rows[:, 0]) and np.array_equal(rows[:, 0], truth)
    assert scores.dtype == np.float32 and np.allclose(scores[:, 0], exact_scores[:, 0], atol=1e-6)
    shortlist, _ = index.search_brute(queries, 100, dim=64, scan_dtype="bfloat16")
    exact_shortlist, _ = index.search_brute(queries, 100, dim=64)
    overlap = [len(set(a) & set(b)) / 100 for a, b in zip(shortlist, exact_shortlist)]
    assert min(overlap) >= 0.95  # only rows within bfloat16 rounding of the 100th score may differ
    with pytest.raises(ValueError, match="scan_dtype 'float8'"):
        index.search(queries, 1, scan_dtype="float8")


def test_bfloat16_keys_pick_the_groups_of_bfloat16_maxima(population, monkeypatch):
    """The int16 keys of bfloat16 scores choose the same groups as the bfloat16 maxima themselves."""
    index, queries, _ = population
    monkeypatch.setattr(exhaustive, "COARSEST", 8)
    segments, inverse = index._prefix_parts(64)
    unit_queries = torch.nn.functional.normalize(torch.as_tensor(queries[:, :64]).float(), dim=1)
    levels = exhaustive._scan(segments, inverse, unit_queries, exhaustive.Workspace(), torch.bfloat16)
    assert levels[0].dtype == torch.int16 and len(levels) == 4
    decoded = [level.view(torch.bfloat16).float() for level in levels]
    scores = torch.as_tensor(index.prefix(64)) @ unit_queries.T  # [N, B] float32
    padded = torch.cat([scores, scores.new_full((-len(scores) % exhaustive.GROUP, len(queries)), -torch.inf)])
    maxima = padded.view(-1, exhaustive.GROUP, len(queries)).amax(dim=1)
    positive = maxima > 0.01  # such keys order like the values; a group with no positive score keys below them
    assert positive.float().mean() > 0.9 and (levels[0][maxima < -0.01] < 0).all()
    assert torch.allclose(decoded[0][positive], maxima[positive], rtol=2**-7, atol=2**-8)  # bfloat16 inputs and scores
    for k in (5, 20):
        assert torch.equal(
            exhaustive._descend(levels, k), exhaustive._descend([level.where(level >= 0, -1.0) for level in decoded], k)
        )


def test_a_bfloat16_scan_with_negative_best_scores_falls_back_to_float32():
    """Where a chosen group holds no score >= 0 its key says nothing: that query is scanned in float32."""
    rng = np.random.default_rng(3)
    rows = unit(rng.standard_normal((400, 64)).astype(np.float32) * 0.5 + 1.0)  # around the diagonal
    index = CascadeIndex(rows, [str(i) for i in range(len(rows))], dims=[64])
    queries = np.stack([-rows.mean(axis=0), rows[7]])  # every cosine negative; an ordinary query
    rows_bf16, scores_bf16 = index.search_brute(queries, 5, scan_dtype="bfloat16")
    rows_exact, scores_exact = index.search_brute(queries, 5)
    assert (scores_exact[0] < 0).all() and rows_exact[1, 0] == 7
    assert np.array_equal(rows_bf16[0], rows_exact[0]) and np.allclose(scores_bf16, scores_exact, atol=1e-6)


def test_the_cascade_scans_in_bfloat16_by_default_only_where_the_cpu_has_it(population, monkeypatch):
    from mrl_dist.search import index as index_module

    index, queries, _ = population
    for native, expected in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(index_module, "native_bfloat16", lambda native=native: native)
        assert index_module.scan_dtype_for("auto") == expected
        assert index_module.scan_dtype_for("auto", backend="faiss") == "float32"
        assert np.array_equal(index.search(queries, 3)[0], index.search(queries, 3, scan_dtype=expected)[0])
    with pytest.raises(ValueError, match="scan_dtype 'int8'.*auto"):
        index_module.scan_dtype_for("int8")


def test_float16_storage_finds_the_same_speakers(population):
    index, queries, _ = population
    half = CascadeIndex(index.embeddings, index.keys, dtype="float16")
    assert half.embeddings.dtype == np.float16
    assert np.array_equal(half.search(queries, 1)[0], index.search(queries, 1)[0])


def test_save_and_load_round_trip(population, tmp_path):
    index, queries, _ = population
    path = index.save(tmp_path / "index.npz")
    assert keys_path(path).is_file() and not list(tmp_path.glob(".*tmp"))
    loaded = CascadeIndex.load(path)
    assert loaded.keys == index.keys and loaded.labels == index.labels and loaded.dims == index.dims
    assert np.array_equal(loaded.embeddings, index.embeddings)
    assert np.array_equal(loaded.search(queries, 3)[0], index.search(queries, 3)[0])


def test_faiss_backend_equals_the_torch_backend(population):
    pytest.importorskip("faiss")
    index, queries, _ = population
    faiss_index = CascadeIndex(index.embeddings, index.keys, backend="faiss")
    rows, scores = faiss_index.search(queries, 5)
    assert np.array_equal(rows, index.search(queries, 5)[0])
    brute_rows, brute_scores = faiss_index.search_brute(queries, 5, dim=128)
    expected_rows, expected_scores = index.search_brute(queries, 5, dim=128)
    assert np.array_equal(brute_rows, expected_rows) and np.allclose(brute_scores, expected_scores, atol=1e-5)


def test_faiss_missing_names_the_package_to_install(population, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("No module named 'faiss'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    index, queries, _ = population
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        CascadeIndex(index.embeddings[:100], index.keys[:100], backend="faiss").search(queries, 1)


def test_a_dim_not_in_the_index_is_an_error_naming_it(population):
    index, queries, _ = population
    with pytest.raises(ValueError, match=r"dim 48 is not a dim of this index \(dims \[64, 128, 192, 256\]\)"):
        index.search(queries, 1, first_dim=48)
    with pytest.raises(ValueError, match="dim 100 is not a dim"):
        index.search_brute(queries, 1, dim=100)


def test_queries_shorter_than_the_searched_dim_are_an_error_naming_both(population):
    index, queries, _ = population
    with pytest.raises(ValueError, match=r"queries of shape \(64, 128\) have fewer than the 256 dims"):
        index.search(queries[:, :128], 1)
    assert index.search(queries[:, :128], 1, final_dim=128)[0].shape == (64, 1)


def test_per_speaker_enrolment_is_the_mean_of_unit_utterances():
    rng = np.random.default_rng(0)
    utterances = rng.standard_normal((6, 64)).astype(np.float32) * np.array([[1], [5], [2], [1], [3], [1]])
    keys = ["b/v1/1", "a/v1/1", "b/v2/1", "a/v2/2", "c/v1/1", "a/v3/3"]
    index = enrol_embeddings(utterances, keys)
    assert index.keys == ["a", "b", "c"] and index.dims == [64]
    expected = unit(unit(utterances)[[1, 3, 5]].mean(axis=0, keepdims=True))
    assert np.allclose(index.embeddings[0], expected[0], atol=1e-6)
    per_utterance = enrol_embeddings(utterances, keys, per_utterance=True)
    assert per_utterance.keys == keys and per_utterance.labels == ["b", "a", "b", "a", "c", "a"]


def test_a_missing_keys_file_is_an_error_naming_it(tmp_path):
    np.save(tmp_path / "emb.npy", np.ones((2, 64), dtype=np.float32))
    with pytest.raises(FileNotFoundError, match="emb.keys.txt"):
        read_embedding_file(tmp_path / "emb.npy")


def write_embeddings(path, embeddings: np.ndarray, keys: list[str]) -> None:
    np.save(path, embeddings.astype(np.float32))
    path.with_suffix(".keys.txt").write_text("\n".join(keys) + "\n")


def test_cli_enrols_and_queries_embedding_files(tmp_path, capsys):
    centres = synthetic_centres(20, seed=3)
    utterances = np.repeat(centres, 2, axis=0) + 0.05 * np.random.default_rng(0).standard_normal((40, 256))
    keys = [f"id{i // 2:03d}/v1/{i % 2:05d}" for i in range(40)]
    write_embeddings(tmp_path / "enrol.npy", utterances, keys)
    queries = centres[[4, 11]] + 0.05
    write_embeddings(tmp_path / "queries.npy", queries, ["q/one", "q/two"])

    assert (
        search_main(["enrol", "--embeddings", str(tmp_path / "enrol.npy"), "--output", str(tmp_path / "ix.npz")]) == 0
    )
    assert "20 rows (20 speakers" in capsys.readouterr().err
    assert (
        search_main(
            [
                "query",
                "--index",
                str(tmp_path / "ix.npz"),
                "--embeddings",
                str(tmp_path / "queries.npy"),
                "--top",
                "3",
                "--shortlist",
                "10",
            ]
        )
        == 0
    )
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| query | #1 | #2 | #3 |"
    assert table[2].startswith("| q/one | id004 (") and table[3].startswith("| q/two | id011 (")

    output = tmp_path / "results.json"
    assert (
        search_main(
            [
                "query",
                "--index",
                str(tmp_path / "ix.npz"),
                "--embeddings",
                str(tmp_path / "queries.npy"),
                "--brute",
                "--top",
                "2",
                "--output",
                str(output),
            ]
        )
        == 0
    )
    results = json.loads(output.read_text())
    assert [r["key"] for r in results] == ["q/one", "q/two"]
    assert results[0]["results"][0]["label"] == "id004" and len(results[0]["results"]) == 2


def test_cli_errors_name_the_bad_value(tmp_path, capsys):
    write_embeddings(tmp_path / "enrol.npy", synthetic_centres(4), ["a/1", "b/1", "c/1", "d/1"])
    np.save(tmp_path / "lonely.npy", np.ones((1, 256), dtype=np.float32))
    assert (
        search_main(["enrol", "--embeddings", str(tmp_path / "lonely.npy"), "--output", str(tmp_path / "x.npz")]) == 2
    )
    assert "lonely.keys.txt" in capsys.readouterr().err
    assert (
        search_main(["enrol", "--embeddings", str(tmp_path / "enrol.npy"), "--output", str(tmp_path / "ix.npz")]) == 0
    )
    write_embeddings(tmp_path / "short.npy", np.ones((1, 64)), ["q"])
    assert search_main(["query", "--index", str(tmp_path / "ix.npz"), "--embeddings", str(tmp_path / "short.npy")]) == 2
    assert "fewer than the 256 dims" in capsys.readouterr().err
    assert (
        search_main(
            [
                "query",
                "--index",
                str(tmp_path / "ix.npz"),
                "--embeddings",
                str(tmp_path / "enrol.npy"),
                "--first-dim",
                "32",
            ]
        )
        == 2
    )
    assert "dim 32 is not a dim of this index" in capsys.readouterr().err
    assert (
        search_main(["query", "--index", str(tmp_path / "missing.npz"), "--embeddings", str(tmp_path / "enrol.npy")])
        == 2
    )
    assert "missing.npz not found" in capsys.readouterr().err


def test_cli_enrols_from_shards_through_a_checkpoint(tmp_path, capsys, make_shards):
    from mrl_dist.demo.corpus import make_demo_corpus
    from mrl_dist.models import ReDimNetMRL, build_preset

    corpus = make_demo_corpus(tmp_path / "corpus", speakers=4, utterances=3, seed=0, test_fraction=0.5)
    make_shards.pack_split(
        [corpus.test_dir], tmp_path / "shards", "val", trials=corpus.trials, workers=1, progress=False
    )
    torch.manual_seed(0)
    checkpoint = tmp_path / "best.pt"
    ReDimNetMRL.from_redimnet(build_preset("tiny"), dims=[32, 64, 128], head_init="pretrained").save_checkpoint(
        checkpoint
    )
    assert (
        search_main(
            [
                "enrol",
                "--shards",
                str(tmp_path / "shards" / "val.manifest.json"),
                "--checkpoint",
                str(checkpoint),
                "--per-utterance",
                "--max-seconds",
                "1",
                "--output",
                str(tmp_path / "ix.npz"),
            ]
        )
        == 0
    ), capsys.readouterr().err
    index = CascadeIndex.load(tmp_path / "ix.npz")
    assert len(index) == 6 and len(set(index.labels)) == 2 and index.dims == [32, 64, 128]
    assert all(label == key.split("/")[0] for key, label in zip(index.keys, index.labels))


def test_demo_split_enrols_half_of_each_speaker():
    keys = [f"s{s}/v/{u}" for s in range(2) for u in range(5)]
    enrol, query = split_enrolment(keys)
    assert enrol == ["s0/v/0", "s0/v/1", "s1/v/0", "s1/v/1"] and len(query) == 6


def test_bench_prints_both_modes_and_says_how_to_make_the_demo(tmp_path, capsys):
    assert (
        bench_search_main(
            [
                "--sizes",
                "3000",
                "--queries",
                "50",
                "--batch",
                "25",
                "--repeats",
                "1",
                "--demo",
                str(tmp_path / "no-demo"),
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    rows = [line for line in captured.out.splitlines() if line.startswith("| 3,000 |")]
    assert [row.split("|")[2].strip() for row in rows] == [
        "brute force 256-D",
        "cascade 64 -> 256, K = 100",
        "cascade 64 -> 256, K = 100, bfloat16 scan",
        "brute force 256-D, bfloat16 scan",
    ]
    assert "python launch/demo.py" in captured.err
