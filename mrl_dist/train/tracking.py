"""Rank-0 progress reporting: a tqdm bar, `train.log`, `metrics.jsonl`, TensorBoard, wandb.

Every sink is optional and failure-tolerant in one direction only: a missing optional package
(tensorboard, wandb) is reported once, clearly, and the run goes on; a write to the run folder
that fails is an error.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..config import Config, config_to_dict

log = logging.getLogger(__name__)


class Tracker:
    """Created on every rank; only the main process writes anything."""

    def __init__(self, cfg: Config, run_dir: Path, is_main: bool, start_step: int):
        self.is_main = is_main
        self.run_dir = run_dir
        self.every = cfg.logging.every_steps
        self.bar = None
        self.tensorboard = None
        self.wandb = None
        self._last_time = time.perf_counter()
        self._last_step = start_step
        if not is_main:
            return
        self.bar = tqdm(
            total=cfg.training.max_steps, initial=start_step, desc=cfg.training.mode, dynamic_ncols=True, smoothing=0.1
        )
        self.log_file = open(run_dir / "train.log", "a", encoding="utf-8")
        # Library messages (skipped samples, head-init fallbacks, cache builds) go to the run
        # folder too, not only to stderr: one log of the run, on rank 0.
        self.log_handler = logging.StreamHandler(self.log_file)
        self.log_handler.setLevel(logging.INFO)
        self.log_handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
        )
        logging.getLogger("mrl_dist").addHandler(self.log_handler)
        if cfg.logging.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                self.write_line(
                    "tensorboard is not installed: TensorBoard logging is off "
                    "(pip install 'mrl-dist[tensorboard]', or set logging.tensorboard: false)"
                )
        if cfg.logging.wandb:
            try:
                import wandb

                self.wandb = wandb.init(
                    project=cfg.logging.wandb_project,
                    dir=str(run_dir),
                    config=config_to_dict(cfg),
                    id=wandb_run_id(run_dir),
                    resume="allow",
                )
            except ImportError:
                self.write_line("wandb is not installed: wandb logging is off (pip install 'mrl-dist[wandb]')")

    def _main_bar(self) -> tqdm:
        """The progress bar, which only the main process has."""
        if self.bar is None:
            raise RuntimeError("Tracker: the progress bar exists on the main process only")
        return self.bar

    def write_line(self, text: str) -> None:
        if not self.is_main:
            return
        stamped = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}"
        self.log_file.write(stamped + "\n")
        self.log_file.flush()
        (self.bar.write if self.bar is not None else print)(stamped)

    def step(self, step: int, crops_per_step: int, values: dict[str, float] | None) -> None:
        """Advance the bar; every `every_steps`, `values` (plain floats) go to every sink."""
        if not self.is_main:
            return
        bar = self._main_bar()
        bar.update(1)
        if values is None:
            return
        now = time.perf_counter()
        crops_per_second = (step - self._last_step) * crops_per_step / max(1e-9, now - self._last_time)
        self._last_time, self._last_step = now, step
        values = {**values, "crops_per_s": crops_per_second}
        bar.set_postfix(
            loss=f"{values['loss']:.3f}",
            lr=f"{values['lr']:.2e}",
            crops_s=f"{crops_per_second:.0f}",
            skipped=int(values.get("skipped", 0)),
        )
        self.write_line(f"step {step} " + " ".join(f"{k}={_fmt(v)}" for k, v in values.items()))
        self.scalars(step, {f"train/{k}": v for k, v in values.items()})

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.tensorboard is not None:
            for key, value in values.items():
                self.tensorboard.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def validation(self, record: dict[str, Any]) -> None:
        """Append one line to metrics.jsonl and echo it to every sink."""
        if not self.is_main:
            return
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
        step, name = record["step"], record.get("set", "val")
        # data.val (the set "val") keeps the plain `val/` scalars; named sets get their name.
        prefix = "val" if name == "val" else f"val/{name}"
        self.scalars(step, {f"{prefix}/eer@{dim}": value for dim, value in record["eer"].items()})
        eers = " ".join(f"{dim}:{100 * value:.2f}%" for dim, value in record["eer"].items())
        self.write_line(f"validation step {step} {name} EER {eers}")

    def close(self) -> None:
        if not self.is_main:
            return
        self._main_bar().close()
        logging.getLogger("mrl_dist").removeHandler(self.log_handler)
        self.log_file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()


WANDB_ID_FILE = "wandb_run_id.txt"


def wandb_run_id(run_dir: Path) -> str:
    """The run folder's wandb run id, made on its first start and kept in the folder, so every
    resume continues the same wandb run instead of starting a new one."""
    path = run_dir / WANDB_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:16]  # wandb ids: letters and digits, up to 64 characters
    path.write_text(run_id + "\n")
    return run_id


def _fmt(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
