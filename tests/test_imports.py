"""What importing mrl_dist pulls in: packing shards never imports torch, every package front
imports on its own (no cycles), optional extras stay unimported until used, and no module reads
/proc. Each import runs in a fresh interpreter, so nothing this test process loaded hides a miss."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OPTIONAL_EXTRAS = ("transformers", "onnx", "onnxruntime", "faiss", "matplotlib", "deepspeed", "wandb")
PACKAGE_FRONTS = ("models", "train", "eval", "export", "search", "config", "data", "tools", "demo")


def modules_after(code: str) -> set[str]:
    """The top-level names in sys.modules after a fresh interpreter runs `code` in the repository."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{name.split('.')[0] for name in sys.modules}})))"
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    "module",
    [
        "mrl_dist.data.packing",
        "mrl_dist.data.shard_writer",
        "mrl_dist.data.audio",
        "mrl_dist.data.manifest",
        "mrl_dist.data.cli",
        "mrl_dist.config",
        "mrl_dist.demo.corpus",
        "mrl_dist.tools.packing_cli",
        "mrl_dist.tools.bench_packing",
    ],
)
def test_packing_modules_do_not_import_torch(module):
    assert "torch" not in modules_after(f"import {module}")


def test_make_shards_help_does_not_import_torch():
    code = (
        "import runpy, sys\n"
        "sys.argv = ['launch/make_shards.py', '--help']\n"
        "try:\n"
        "    runpy.run_path('launch/make_shards.py', run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
    )
    assert "torch" not in modules_after(code)


@pytest.mark.parametrize("front", PACKAGE_FRONTS)
def test_each_package_front_imports_alone_with_every_public_name_and_no_optional_extra(front):
    code = f"import mrl_dist.{front} as front\nfor name in getattr(front, '__all__', []):\n    getattr(front, name)"
    loaded = modules_after(code)
    assert not loaded & set(OPTIONAL_EXTRAS), sorted(loaded & set(OPTIONAL_EXTRAS))


def test_the_gpu_check_front_exports_only_its_entry_point():
    from mrl_dist.tools import gpu_check

    assert gpu_check.__all__ == ["main"]


# The one /proc file a module may read: the packing benchmark's own peak memory (VmHWM), which
# getrusage cannot give a process forked from a larger one.
OWN_PROC_READS = {"mrl_dist/tools/bench_packing.py": ["/proc/self/status"]}


def test_no_module_reads_proc_but_its_own_peak_memory():
    # Launch facts come from what the launcher exports (train/launcher.py), never from another
    # process's /proc entries.
    readers = {
        str(path.relative_to(REPO)): sorted(set(re.findall(r"/proc/[^\s\"')]*", path.read_text())))
        for path in (REPO / "mrl_dist").rglob("*.py")
    }
    assert {path: found for path, found in readers.items() if found} == OWN_PROC_READS
