"""make_shards at VoxCeleb2 scale: the disk peak stays near the final size; planning a VoxCeleb2
listing keeps within its targets (under a minute and 2 GB), extrapolated from an eighth of it.

Planning time and the memory above the interpreter grow linearly with the listing (measured at
1/8, 1/4 and the whole), so the eighth checks the targets in 5 s instead of 40. The whole
1,092,009-file listing is measured by `python launch/bench_packing.py` (docs/benchmarks.md,
"Packing VoxCeleb2")."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import tone, write_wav

from mrl_dist.data import shard_writer
from mrl_dist.data.manifest import read_manifest
from mrl_dist.tools.bench_packing import (
    VOXCELEB2_SPEAKERS,
    VOXCELEB2_UTTERANCES,
    FolderSampler,
    folder_bytes,
    measure_planning,
)

SHARD_SIZE_MB = 0.05


@pytest.fixture(scope="module")
def many_small_files(tmp_path_factory) -> Path:
    """48 one-second 16 kHz wavs of 4 speakers: ~20 shards of 0.05 MiB, so one shard per
    worker is a small part of the whole and twice the final size would break the bound."""
    root = tmp_path_factory.mktemp("small") / "dev"
    for index in range(48):
        key = f"id{index % 4:05d}/v{index // 16}/{index:05d}"
        write_wav(root / f"{key}.wav", tone(1.0, 16000, 150 + 7 * index, seed=zlib.crc32(key.encode())), 16000)
    return root


def shard_sizes(output: Path) -> list[int]:
    return [path.stat().st_size for path in output.glob("train-*.tar")]


def test_peak_disk_of_one_worker_is_the_final_size_plus_one_shard(many_small_files, make_shards, tmp_path, monkeypatch):
    release, sizes = shard_writer.release_cache, []

    def measure_then_release(records, cache_dir):
        # The disk only shrinks when a sealed shard's cache files go: just before is a peak.
        sizes.append(folder_bytes(tmp_path))
        release(records, cache_dir)

    monkeypatch.setattr(shard_writer, "release_cache", measure_then_release)
    make_shards.pack_split(
        [many_small_files], tmp_path, "train", workers=1, shard_size_mb=SHARD_SIZE_MB, progress=False
    )
    final, largest = folder_bytes(tmp_path), max(shard_sizes(tmp_path))
    assert len(sizes) == len(shard_sizes(tmp_path)) >= 15
    assert final > 10 * largest  # twice the final size is far above the bound
    assert final <= max(sizes) <= 1.1 * final + largest, (max(sizes), final, largest)


def test_peak_disk_of_two_workers_stays_within_a_shard_per_worker(many_small_files, make_shards, tmp_path):
    with FolderSampler(tmp_path, interval=0.0005) as sampler:
        make_shards.pack_split(
            [many_small_files], tmp_path, "train", workers=2, shard_size_mb=SHARD_SIZE_MB, progress=False
        )
    final, largest = folder_bytes(tmp_path), max(shard_sizes(tmp_path))
    assert final > 10 * largest
    assert final <= sampler.peak <= 1.1 * final + 2 * largest, (sampler.peak, final, largest)


@pytest.mark.slow
def test_an_eighth_of_a_voxceleb2_listing_extrapolates_within_the_targets_and_reads_back(tmp_path):
    utterances, speakers = VOXCELEB2_UTTERANCES // 8, VOXCELEB2_SPEAKERS // 8
    # The fresh process reports its own peak, not its parent's: a suite run is ~0.9 GB by now,
    # and half a GiB held here makes sure of a parent far larger than the bound.
    held = np.ones(2**29, dtype=np.uint8)
    result = measure_planning(tmp_path, utterances, speakers)
    del held
    planning = {
        stage: seconds for stage, seconds in result["seconds"].items() if stage != "pass-1 log"
    }  # written during pass 1's hours of decoding
    assert 8 * sum(planning.values()) < 60, result["seconds"]
    interpreter = result["rss_start"]  # what the process held before the listing
    assert interpreter + 8 * (result["peak_rss"] - interpreter) < 2 * 2**30, result
    manifest = read_manifest(tmp_path / "train.manifest.json")
    assert manifest.total_samples == utterances
    assert sum(shard.samples for shard in manifest.shards) == utterances
    assert manifest.num_speakers == speakers
    assert len(manifest.shards) == result["shards"] > 500 / 8  # 256 MiB shards of ~150 GB / 8


def test_packing_benchmark_prints_every_table(capsys):
    from mrl_dist.tools.packing_cli import bench_packing_main

    assert (
        bench_packing_main(
            [
                "--utterances",
                "2",
                "--formats",
                "16k-mono",
                "--levels",
                "0",
                "5",
                "--crops",
                "20",
                "--disk-workers",
                "1",
                "--shard-size-mb",
                "0.1",
                "--scale-utterances",
                "500",
                "--cores",
                "8",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    for heading in (
        "| 16 kHz mono AAC | 2 |",
        "| 5 |",
        "Pass 2 (`write_shard`",
        "| 1 | ",
        "| plan_split |",
        "Peak RSS",
        "| 8 | ",
    ):
        assert heading in printed, heading
