"""Where metrics go: a JSONL file (always), TensorBoard, wandb (offline by default), a live progress bar."""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from areal.config import TrainConfig

# the progress line's numbers: short labels and formats, so the line fits a 100-column terminal with its bar
HEADLINE = {"eval/accuracy": ("acc", ".3f"), "eval/reward": ("eval", ".3g"), "rollout/reward_mean": ("reward", ".3g"),
            "staleness/mean": ("stale", ".2g"), "rollout/samples_per_s": ("samples/s", ".3g")}


class JsonlSink:
    """One JSON object per step in RUN_DIR/metrics.jsonl: the record reports are made from.

    Every row carries ``time`` (unix seconds) and ``elapsed_s``, the run's seconds so far, so a metric can be
    drawn against wall-clock time as well as steps. The clock starts when the sink opens (before the actors
    start) and a resumed run continues it from the file's last row: the time a run was stopped is not counted.
    """

    def __init__(self, out_dir: Path, clock: Callable[[], float] = time.time):
        path = out_dir / "metrics.jsonl"
        self.clock = clock
        self.offset, self.started = last_elapsed(path), clock()
        self.file = open(path, "a", buffering=1)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        now = self.clock()
        clean = {k: (v if isinstance(v, (int, float)) and math.isfinite(v) else None) for k, v in metrics.items()}
        stamp = {"time": round(now, 3), "elapsed_s": round(self.offset + now - self.started, 3)}
        self.file.write(json.dumps({"step": step, **stamp, **clean}) + "\n")

    def close(self) -> None:
        self.file.close()


def last_elapsed(path: Path) -> float:
    """``elapsed_s`` of the last complete row of an earlier metrics.jsonl (0 if none): where a resumed run's
    clock continues."""
    if not path.exists():
        return 0.0
    for line in reversed(path.read_text().splitlines()):
        try:
            value = json.loads(line).get("elapsed_s")
        except (json.JSONDecodeError, AttributeError):
            continue  # a torn last line of a killed run
        if isinstance(value, (int, float)):
            return float(value)
    return 0.0


class TensorBoardSink:
    """TensorBoard event files in RUN_DIR/tensorboard."""

    def __init__(self, out_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out_dir / "tensorboard"))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """wandb run in RUN_DIR/wandb; offline unless logging.wandb_mode=online. A resumed run (checkpoint.resume or
    resume_from) continues the wandb run of its out_dir, whose id is kept in RUN_DIR/wandb_run_id."""

    def __init__(self, cfg: TrainConfig, out_dir: Path):
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        id_file = out_dir / "wandb_run_id"
        resuming = (cfg.checkpoint.resume or bool(cfg.checkpoint.resume_from)) and id_file.exists()
        run_id = id_file.read_text().strip() if resuming else uuid.uuid4().hex[:12]
        id_file.write_text(run_id)
        self.run = wandb.init(project=cfg.logging.wandb_project, mode=cfg.logging.wandb_mode, dir=str(out_dir),
                              config=asdict(cfg), name=out_dir.name, reinit="finish_previous", id=run_id,
                              resume="allow" if resuming else None)
        self.resumed = resuming

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


class ProgressSink:
    """A live terminal bar: steps done, ETA and the headline numbers."""

    def __init__(self, total_steps: int):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("[bold]train"), BarColumn(bar_width=16),
                                 TextColumn("{task.completed}/{task.total}"),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                 TextColumn("{task.fields[headline]}"))
        self.task = self.progress.add_task("train", total=total_steps, headline="")
        self.latest: dict[str, float] = {}
        self.progress.start()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.latest.update({k: v for k, v in metrics.items() if k in HEADLINE})
        self.progress.update(self.task, completed=step, headline=headline(self.latest))

    def close(self) -> None:
        self.progress.stop()


def headline(latest: dict[str, float]) -> str:
    """The latest headline numbers, in ``HEADLINE``'s order: e.g. ``acc 0.675  reward 0.42  stale 2.5``."""
    return "  ".join(f"{label} {latest[key]:{spec}}" for key, (label, spec) in HEADLINE.items() if key in latest)


def make_sinks(cfg: TrainConfig, out_dir: Path) -> list:
    """The sinks the config asks for; the JSONL record is always kept."""
    sinks: list = [JsonlSink(out_dir)]
    if cfg.logging.tensorboard:
        sinks.append(TensorBoardSink(out_dir))
    if cfg.logging.wandb_mode != "disabled":
        sinks.append(WandbSink(cfg, out_dir))
    if cfg.logging.progress:
        sinks.append(ProgressSink(cfg.total_steps))
    return sinks
