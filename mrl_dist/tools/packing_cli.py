"""Command line of `launch/bench_packing.py`: what packing VoxCeleb2 costs (tools/bench_packing.py).

Prints Markdown tables: pass 1's transcode speed per source format and where its time goes,
FLAC level vs bytes and crop-decode speed, pass 2's speed, the peak disk of real packs, planning
a VoxCeleb2-sized listing, and the VoxCeleb2 estimate at several core counts.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from ..cli_errors import add_error_options, command, program_name
from .machine import bench_header

SOURCE_FORMATS = {"16k-mono": (16000, 1), "44k-stereo": (44100, 2), "48k-stereo": (48000, 2)}


def parse_bench_packing_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program_name("bench_packing.py"),
        description="Packing cost per hour of audio on this machine, and the VoxCeleb2 estimate.",
    )
    parser.add_argument(
        "--utterances", type=int, default=40, help="synthetic m4a utterances (4-11 s) per source format"
    )
    parser.add_argument(
        "--formats",
        nargs="+",
        default=list(SOURCE_FORMATS),
        choices=SOURCE_FORMATS,
        help="AAC source formats to transcode",
    )
    parser.add_argument(
        "--levels", nargs="+", type=int, default=[0, 5, 8], help="FLAC compression levels to compare (0..8)"
    )
    parser.add_argument("--crops", type=int, default=2000, help="2 s crops decoded per level")
    parser.add_argument(
        "--shard-size-mb", type=float, default=0.5, help="shard size of the disk-peak packs (small, so a pack has many)"
    )
    parser.add_argument("--disk-workers", nargs="+", type=int, default=[1, 2], help="--workers of each disk-peak pack")
    parser.add_argument(
        "--scale-utterances", type=int, default=1_092_009, help="records of the planning-scale listing (0: skip it)"
    )
    parser.add_argument(
        "--cores", nargs="+", type=int, default=[8, 32, 64], help="core counts of the VoxCeleb2 estimate"
    )
    parser.add_argument(
        "--disk-gb-per-s", type=float, default=2.0, help="disk bandwidth of the estimate's disk-bound column"
    )
    add_error_options(parser)
    args = parser.parse_args(argv)
    if args.utterances < 2 or any(not 0 <= level <= 8 for level in args.levels):
        parser.error("--utterances must be >= 2 and every --levels value in 0..8")
    return args


@command("bench_packing.py")
def bench_packing_main(argv: list[str]) -> int:
    """`launch/bench_packing.py`: the tables of mrl_dist/tools/bench_packing.py on stdout."""
    args = parse_bench_packing_args(argv)
    from . import bench_packing as bench

    print(bench_header() + "\n")
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        transcodes = []
        for name in args.formats:
            rate, channels = SOURCE_FORMATS[name]
            corpus = work / name / "m4a"
            bench.synthetic_m4a_corpus(corpus, args.utterances, rate, channels)
            label = f"{rate / 1000:g} kHz {'stereo' if channels == 2 else 'mono'} AAC"
            transcodes.append(bench.measure_transcode(corpus, label, work / name / "cache"))
        _print_transcode(transcodes)
        reference = args.formats[0]  # 16k-mono by default: VoxCeleb2 as shipped
        levels = bench.measure_flac_levels(work / reference / "cache", args.levels, args.crops)
        pass2_rate, shard_bytes_per_hour = bench.measure_pass2(
            work / reference / "m4a", work / reference / "pass2", 16.0
        )
        _print_levels(levels, shard_bytes_per_hour, bench.PCM16_BYTES_PER_HOUR, bench.VOXCELEB2_HOURS)
        print(
            f"\nPass 2 (`write_shard`: read cache, tar, fsync, sha256), one process: "
            f"{pass2_rate:,.0f} MB of shards/s; shards at level 0: "
            f"{shard_bytes_per_hour / 1e6:,.1f} MB per hour of audio.\n"
        )
        disks = [
            bench.measure_disk(work / reference / "m4a", work / reference / f"disk{w}", w, args.shard_size_mb)
            for w in args.disk_workers
        ]
        _print_disk(disks, args.shard_size_mb)
        planning_seconds = 0.0
        if args.scale_utterances:
            listed = min(20_000, args.scale_utterances)
            listing = bench.measure_listing(work / "listing", listed) * args.scale_utterances
            scale = bench.measure_planning(work / "scale", args.scale_utterances)
            _print_planning(scale, listing, listed)
            planning_seconds = listing + sum(
                scale["seconds"][stage] for stage in ("fingerprint", "plan_split", "plan digests", "write manifest")
            )
    estimates = [
        bench.voxceleb2_estimate(
            cores, transcodes[0], pass2_rate, shard_bytes_per_hour, planning_seconds, args.disk_gb_per_s
        )
        for cores in args.cores
    ]
    _print_estimates(estimates, transcodes[0].source, args.disk_gb_per_s)
    return 0


def _print_transcode(results) -> None:
    print(
        "| source | files | audio | decode (x RT) | down-mix + resample (x RT) | FLAC encode "
        "(x RT) | time shares decode / resample / encode | pass-1 worker, cache write "
        "included (x RT per core) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    for r in results:
        shares = " / ".join(f"{share:.0%}" for share in r.shares)
        print(
            f"| {r.source} | {r.files} | {r.audio_seconds / 60:.1f} min | {r.decode:,.0f} | "
            f"{r.resample:,.0f} | {r.encode:,.0f} | {shares} | **{r.worker:,.0f}** |"
        )


def _print_levels(levels, shard_bytes_per_hour: float, pcm_per_hour: float, voxceleb2_hours: float) -> None:
    base = next((r for r in levels if r.level == 0), levels[0])
    overhead = shard_bytes_per_hour - base.bytes_per_hour  # tar headers, padding, .json members
    print(
        "\n| FLAC level | FLAC MB per hour | of 16-bit PCM | shard MB per hour | VoxCeleb2 dev "
        "shards | 2 s crops/s, one core | crop time vs level 0 |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in levels:
        shards = r.bytes_per_hour + overhead
        print(
            f"| {r.level} | {r.bytes_per_hour / 1e6:,.1f} | "
            f"{r.bytes_per_hour / pcm_per_hour:.1%} | {shards / 1e6:,.1f} | "
            f"{shards * voxceleb2_hours / 1e9:,.0f} GB | "
            f"{r.crops_per_second:,.0f} | {base.crops_per_second / r.crops_per_second:.2f}x |"
        )


def _print_disk(results, shard_size_mb: float) -> None:
    print(
        "| --workers | shards | final MB | peak MB (sampled every 1 ms) | peak / final | "
        "bound: 1.1 x final + workers x largest shard (MB) |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        bound = 1.1 * r.final_bytes + r.workers * r.largest_shard
        print(
            f"| {r.workers} | {r.shards} | {r.final_bytes / 1e6:.2f} | "
            f"{r.peak_bytes / 1e6:.2f} | {r.peak_bytes / r.final_bytes:.3f} | "
            f"{bound / 1e6:.2f} |"
        )
    print(f"\n(--shard-size-mb {shard_size_mb:g}; apparent file sizes, the state folder included.)\n")


def _print_planning(scale: dict, listing_seconds: float, listed: int) -> None:
    print(
        f"| planning stage, {scale['samples']:,} records, {scale['speakers']:,} speakers, "
        f"{scale['shards']} shards of 256 MiB | seconds |"
    )
    print("| --- | ---: |")
    print(f"| listing (list_sources; extrapolated from {listed:,} empty files) | {listing_seconds:.2f} |")
    for stage, seconds in scale["seconds"].items():
        print(f"| {stage} | {seconds:.2f} |")
    print(
        f"\nPeak RSS of the fresh process: {scale['peak_rss'] / 2**30:.2f} GiB "
        f"(interpreter and imports: {scale['rss_start'] / 2**30:.2f} GiB); manifest "
        f"{scale['manifest_bytes'] / 1e3:,.0f} kB, decoded.jsonl "
        f"{scale['jsonl_bytes'] / 1e6:,.0f} MB.\n"
    )


def _print_estimates(estimates, source: str, disk_gb_per_s: float) -> None:
    print(f"VoxCeleb2 dev from {source} ({estimates[0]['source_gb']:,.0f} GB of m4a at this corpus' bitrate):\n")
    print(
        f"| cores | pass 1, CPU-bound | pass 2, CPU-bound | planning | total, CPU-bound | "
        f"total on one {disk_gb_per_s:g} GB/s disk | final shards | peak disk (final + a "
        "256 MiB shard per pass-2 process) |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for e in estimates:
        cpu = e["pass1_hours"] + e["pass2_hours"] + e["planning_hours"]
        disk = e["pass1_disk_hours"] + e["pass2_disk_hours"] + e["planning_hours"]
        print(
            f"| {e['cores']} | {e['pass1_hours'] * 60:.0f} min | {e['pass2_hours'] * 60:.1f} min "
            f"| {e['planning_hours'] * 60:.1f} min | {cpu * 60:.0f} min | {disk * 60:.0f} min | "
            f"{e['final_gb']:,.0f} GB | {e['peak_gb']:,.0f} GB |"
        )
