"""`launch/search.py` (enrol, query) and `launch/bench_search.py`: speaker identification with MRL prefixes.

    python launch/search.py enrol --embeddings enrol.npy --output runs/search/index.npz
    python launch/search.py enrol --shards shards/val.manifest.json --checkpoint RUN/best.pt --output index.npz
    python launch/search.py query --index runs/search/index.npz --embeddings queries.npy --top 5
    python launch/bench_search.py [--sizes 10000 100000 1000000] [--demo runs/demo]

Embedding files are `X.npy` [N, D] with `X.keys.txt` beside them (one key per line, as
`launch/embed.py` writes them); a key's speaker is what comes before its first '/'. An index is
`INDEX.npz` plus `INDEX.keys.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ..cli_errors import InputError, add_error_options, command, program_name
from ..preflight import raise_problems, readable_file_problem, shard_source_problems, writable_output_problem
from ..tools.machine import bench_header
from .index import AUTO, BACKENDS, SCAN_DTYPES, STORAGE_DTYPES, CascadeIndex

# --- search: enrol / query ----------------------------------------------------------------------


def parse_search_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program_name("search.py"),
        description="Enrol speakers into an MRL cascade index, or identify query embeddings.",
    )
    add_error_options(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    enrol = commands.add_parser("enrol", help="build an index from an embedding file or from shards")
    source = enrol.add_mutually_exclusive_group(required=True)
    source.add_argument("--embeddings", type=Path, help="FILE.npy [N, D] with FILE.keys.txt beside it")
    source.add_argument("--shards", help="shards to embed: NAME.manifest.json, a shard list or a brace pattern")
    enrol.add_argument("--checkpoint", type=Path, help="MRL checkpoint that embeds --shards (RUN/best.pt)")
    enrol.add_argument("--output", required=True, type=Path, help="INDEX.npz (INDEX.keys.json is written beside it)")
    enrol.add_argument(
        "--per-utterance",
        action="store_true",
        help="one row per utterance (default: one per speaker, the mean of its utterances)",
    )
    enrol.add_argument(
        "--dims",
        type=int,
        nargs="+",
        help="searchable prefixes (default: 64/128/192/256 up to D, or the checkpoint's dims)",
    )
    enrol.add_argument("--dtype", choices=STORAGE_DTYPES, default="float32", help="storage (default float32)")
    enrol.add_argument("--batch-size", type=int, default=16, help="utterances per batch with --shards (default 16)")
    enrol.add_argument("--max-seconds", type=float, help="use only the first N seconds of each utterance")
    enrol.add_argument("--device", default="cpu", help="torch device for --shards (default cpu)")

    query = commands.add_parser("query", help="the top-N enrolled speakers of every query embedding")
    query.add_argument("--index", required=True, type=Path, help="INDEX.npz written by `enrol`")
    query.add_argument("--embeddings", required=True, type=Path, help="FILE.npy [B, D] with FILE.keys.txt")
    query.add_argument("--top", type=int, default=5, help="results per query (default 5)")
    query.add_argument("--first-dim", type=int, default=64, help="prefix that scores every enrolment (default 64)")
    query.add_argument("--shortlist", type=int, default=100, help="rows re-scored at --final-dim (default 100)")
    query.add_argument("--final-dim", type=int, help="dim of the final scores (default: the index's largest)")
    query.add_argument("--brute", action="store_true", help="exact search at --final-dim instead of the cascade")
    query.add_argument("--backend", choices=BACKENDS, default="torch", help="exhaustive stage (default torch)")
    query.add_argument(
        "--scan-dtype",
        choices=[*SCAN_DTYPES, AUTO],
        default=AUTO,
        help="precision of the scan over all enrolments: float32 (exact), bfloat16 (2-3x faster "
        "on CPUs with AMX / AVX512-BF16; the shortlist is still scored in float32) or auto "
        "(default: bfloat16 where the CPU has it, float32 elsewhere and with --brute)",
    )
    query.add_argument("--output", type=Path, help="write the results as JSON here instead of printing a table")
    args = parser.parse_args(argv)
    if args.command == "enrol" and (args.shards is None) != (args.checkpoint is None):
        parser.error("--shards and --checkpoint go together")
    if args.command == "query" and (args.top < 1 or args.shortlist < 1):
        parser.error("--top and --shortlist must be >= 1")
    return args


def check_search_inputs(args: argparse.Namespace) -> None:
    """What embedding shards needs (the checkpoint, the shards) and where the results go, before
    any work; the embedding and index files are read first thing anyway, with errors naming them."""
    problems = [writable_output_problem(args.output, "--output")] if args.output is not None else []
    if args.command == "enrol" and args.shards is not None:
        problems.append(readable_file_problem(args.checkpoint, "--checkpoint"))
        problems += shard_source_problems(args.shards, "--shards")
    raise_problems(problems)


def run_enrol(args: argparse.Namespace) -> CascadeIndex:
    """The index `args` ask for, saved to --output."""
    from .enrol import enrol_embeddings, enrol_shards, read_embedding_file

    if args.embeddings is not None:
        embeddings, keys = read_embedding_file(args.embeddings)
        index = enrol_embeddings(embeddings, keys, per_utterance=args.per_utterance, dims=args.dims, dtype=args.dtype)
    else:
        index = enrol_shards(
            args.checkpoint,
            args.shards,
            per_utterance=args.per_utterance,
            dims=args.dims,
            dtype=args.dtype,
            device=args.device,
            batch_size=args.batch_size,
            max_seconds=args.max_seconds,
            progress=sys.stderr.isatty(),
        )
    index.save(args.output)
    return index


def run_query(args: argparse.Namespace) -> list[dict]:
    """`[{"key", "results": [{"key", "label", "score"}, ...]}, ...]`, one per query embedding."""
    from .enrol import read_embedding_file

    index = CascadeIndex.load(args.index, backend=args.backend)
    queries, keys = read_embedding_file(args.embeddings)
    if args.brute:
        scan_dtype = "float32" if args.scan_dtype == AUTO else args.scan_dtype
        rows, scores = index.search_brute(queries, args.top, dim=args.final_dim, scan_dtype=scan_dtype)
    else:
        rows, scores = index.search(
            queries,
            args.top,
            first_dim=args.first_dim,
            shortlist=args.shortlist,
            final_dim=args.final_dim,
            scan_dtype=args.scan_dtype,
        )
    return [
        {
            "key": key,
            "results": [
                {"key": index.keys[r], "label": index.labels[r], "score": round(float(s), 6)}
                for r, s in zip(row, score)
            ],
        }
        for key, row, score in zip(keys, rows, scores)
    ]


def results_table(results: list[dict]) -> str:
    """Markdown: one line per query, its results as `label (score)` best first."""
    width = max(len(entry["results"]) for entry in results)
    lines = ["| query | " + " | ".join(f"#{rank}" for rank in range(1, width + 1)) + " |", "|---|" + "---|" * width]
    for entry in results:
        cells = [f"{hit['label']} ({hit['score']:.3f})" for hit in entry["results"]]
        lines.append(f"| {entry['key']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@command("search.py")
def search_main(argv: list[str]) -> int:
    """`launch/search.py`: enrol (index written, summary on stderr) or query (table or JSON); 2
    (one line on stderr) on a bad input."""
    args = parse_search_args(argv)
    check_search_inputs(args)
    try:
        if args.command == "enrol":
            index = run_enrol(args)
            print(
                f"search: {len(index)} rows ({len(set(index.labels))} speakers, dims {index.dims}, "
                f"{index.dtype}) written to {args.output}",
                file=sys.stderr,
            )
            return 0
        results = run_query(args)
    except (OSError, ValueError, ImportError) as error:  # a dim the index lacks, faiss not installed, ...
        raise InputError(str(error)) from error
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2))
        print(f"search: {len(results)} queries, results written to {args.output}", file=sys.stderr)
    else:
        print(results_table(results))
    return 0


# --- bench_search -------------------------------------------------------------------------------


def parse_bench_search_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program_name("bench_search.py"),
        description="Top-1 identification and queries/s: brute force at full dim vs the MRL cascade.",
    )
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[10_000, 100_000, 1_000_000],
        help="synthetic enrolments per index (default 10000 100000 1000000)",
    )
    parser.add_argument("--queries", type=int, default=5000, help="queries per index (default 5000)")
    parser.add_argument("--batch", type=int, default=1000, help="queries per search call (default 1000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the queries (default 3)")
    parser.add_argument(
        "--noise",
        type=float,
        default=2.0,
        help="norm of the noise added to a unit centre to make a query (default 2.0)",
    )
    parser.add_argument("--first-dim", type=int, default=64, help="cascade: prefix scoring every row (default 64)")
    parser.add_argument("--shortlist", type=int, default=100, help="cascade: rows re-scored in full (default 100)")
    parser.add_argument("--dtype", choices=STORAGE_DTYPES, default="float32", help="index storage (default float32)")
    parser.add_argument("--backend", choices=BACKENDS, default="torch", help="exhaustive stage (default torch)")
    parser.add_argument(
        "--scan-dtypes",
        nargs="+",
        choices=list(SCAN_DTYPES),
        default=list(SCAN_DTYPES),
        help="precisions of the scan over all rows to compare (default float32 bfloat16; "
        "the faiss backend: float32 only)",
    )
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--demo",
        type=Path,
        default=Path("runs/demo"),
        help="demo run folder for the held-out-speaker top-1 (default runs/demo)",
    )
    parser.add_argument("--no-demo", action="store_true", help="skip the demo corpus")
    add_error_options(parser)
    args = parser.parse_args(argv)
    if min(args.sizes) < 1 or args.queries < 1 or args.batch < 1 or args.repeats < 1:
        parser.error("--sizes, --queries, --batch and --repeats must be >= 1")
    if args.backend == "faiss" and args.scan_dtypes != ["float32"]:
        parser.error("--backend faiss scans in float32: add --scan-dtypes float32")
    return args


@command("bench_search.py")
def bench_search_main(argv: list[str]) -> int:
    """`launch/bench_search.py`: a Markdown table of top-1 and queries/s per index size and mode,
    then top-1 on the demo's held-out speakers (skipped, with how to make it, without runs/demo)."""
    args = parse_bench_search_args(argv)
    import torch

    from .bench import bench_demo, bench_synthetic

    if args.threads:
        torch.set_num_threads(args.threads)
    print(bench_header())
    print(
        f"\nSynthetic enrolments (256-D, noise {args.noise}), {args.queries} queries in batches of {args.batch}, "
        f"best / median of {args.repeats} passes, {args.dtype} storage, backend {args.backend}:\n"
    )
    print("| enrolled | search | top-1 % | queries/s (best) | queries/s (median) | speed-up (best) |")
    print("|---:|---|---:|---:|---:|---:|")
    for size in args.sizes:
        timings = bench_synthetic(
            size,
            queries=args.queries,
            noise=args.noise,
            batch=args.batch,
            repeats=args.repeats,
            first_dim=args.first_dim,
            shortlist=args.shortlist,
            dtype=args.dtype,
            backend=args.backend,
            scan_dtypes=args.scan_dtypes,
        )
        for timing in timings:
            print(
                f"| {size:,} | {timing.name} | {100 * timing.top1:.1f} | {timing.best_qps:,.0f} | "
                f"{timing.median_qps:,.0f} | {timing.best_qps / timings[0].best_qps:.2f}x |",
                flush=True,
            )
    if args.no_demo:
        return 0
    try:
        demo = bench_demo(args.demo, first_dim=args.first_dim, shortlist=args.shortlist, scan_dtypes=args.scan_dtypes)
    except FileNotFoundError as error:
        print(f"\nbench_search: skipped the demo corpus: {error}", file=sys.stderr)
        return 0
    print(
        f"\nDemo corpus, held-out speakers ({args.demo}): {demo['speakers']} speakers enrolled from "
        f"{demo['enrol_utterances']} utterances, {demo['queries']} queries:\n"
    )
    print("| search | top-1 % |\n|---|---:|")
    for name, top1 in demo["top1"].items():
        print(f"| {name} | {100 * top1:.1f} |")
    return 0
