"""Shards and manifests over HTTP (a server on 127.0.0.1 that drops requests and cuts streams)
and through `pipe:` commands: read exactly as local files, unreachable shards skipped and
counted, never a stall; training and evaluation run from a manifest URL."""

from __future__ import annotations

import functools
import http.server
import threading

import numpy as np
import pytest

from mrl_dist.config import config_from_dict
from mrl_dist.data import remote
from mrl_dist.data.manifest import read_manifest
from mrl_dist.data.pipeline import make_eval_loader, make_train_loader
from mrl_dist.data.shard_reader import SkipCounter, iter_tar_samples
from mrl_dist.demo.run import prepare_demo_shards

from train_configs import tiny_config


class FlakyHandler(http.server.SimpleHTTPRequestHandler):
    """Every 3rd request is dropped without an answer; every 4th shard download is cut halfway."""

    counter = 0
    lock = threading.Lock()

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        with FlakyHandler.lock:
            FlakyHandler.counter += 1
            count = FlakyHandler.counter
        if count % 3 == 0:
            self.close_connection = True
            return  # no status line: the client sees the connection close
        if count % 4 == 0 and self.path.endswith(".tar"):
            path = self.translate_path(self.path)
            with open(path, "rb") as handle:
                data = handle.read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return prepare_demo_shards(tmp_path_factory.mktemp("remote"), speakers=6, utterances=4, seed=9, shard_size_mb=0.2)


@pytest.fixture(scope="module")
def server(shards):
    handler = functools.partial(FlakyHandler, directory=str(shards))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch, tmp_path):
    monkeypatch.setattr(remote, "BACKOFF_SECONDS", 0.01)
    monkeypatch.setenv("MRL_DIST_HTTP_RETRIES", "6")
    monkeypatch.setenv("MRL_DIST_HTTP_TIMEOUT", "5")
    monkeypatch.setenv("MRL_DIST_CACHE", str(tmp_path / "cache"))


def embeddings_of(loader) -> dict[str, np.ndarray]:
    return {
        key: wave[:length].numpy()
        for batch in loader
        for key, wave, length in zip(batch["key"], batch["wave"], batch["lengths"])
    }


def test_a_manifest_url_reads_every_shard_and_the_trials_through_drops(shards, server):
    manifest = read_manifest(f"{server}/val.manifest.json")
    assert len(manifest.shards) > 1 and all(url.startswith(server) for url in manifest.urls)
    assert manifest.trials_path.read_text() == (shards / "val.trials.txt").read_text()
    remote_waves = embeddings_of(make_eval_loader(f"{server}/val.manifest.json", batch_size=4))
    local_waves = embeddings_of(make_eval_loader(shards / "val.manifest.json", batch_size=4))
    assert sorted(remote_waves) == sorted(local_waves)
    assert all(np.array_equal(remote_waves[k], local_waves[k]) for k in local_waves)


@pytest.mark.slow
def test_training_batches_stream_over_http_with_nothing_skipped(shards, server):
    loader = make_train_loader(
        f"{server}/train.manifest.json",
        batch_size=4,
        crop_seconds=0.5,
        num_workers=0,
        seed=0,
        rank=0,
        world_size=1,
        steps_per_epoch=6,
    )
    batches = list(loader)
    assert len(batches) == 6 and loader.skipped == 0


def test_an_unreachable_shard_is_skipped_and_counted_not_waited_for(shards, server):
    skips = SkipCounter("test")
    urls = [
        f"{server}/no-such-shard.tar",
        "http://127.0.0.1:9/closed-port.tar",
        str(sorted(shards.glob("val-*.tar"))[0]),
    ]
    samples = list(iter_tar_samples(urls, skips))
    assert samples and skips.by_reason == {"unreadable-shard": 2}


def test_pipe_commands_serve_shards(shards):
    first = sorted(shards.glob("val-*.tar"))[0]
    skips = SkipCounter("test")
    piped = [s["key"] for s in iter_tar_samples([f"pipe:cat {first}"], skips)]
    local = [s["key"] for s in iter_tar_samples([str(first)], SkipCounter("test"))]
    assert piped == local and not skips.total


def test_a_run_trains_and_validates_from_manifest_urls(shards, server, tmp_path):
    from mrl_dist.train import train

    run_dir = tmp_path / "run"
    config = tiny_config(run_dir, shards)
    config["data"].update(train=f"{server}/train.manifest.json", val=f"{server}/val.manifest.json")
    assert train(config_from_dict(config))["status"] == "finished"
    assert (run_dir / "best.pt").is_file() and "skipped=0" in (run_dir / "train.log").read_text()
