"""Where metrics go: a JSONL file (always), TensorBoard, wandb (offline by default), a live progress bar."""

from __future__ import annotations

import json
import math
import os
import uuid
from dataclasses import asdict
from pathlib import Path

from areal.config import TrainConfig

HEADLINE = ("rollout/reward_mean", "eval/accuracy", "eval/reward", "staleness/mean", "rollout/tokens_per_s",
            "rollout/samples_per_s", "learner/idle_fraction")


class JsonlSink:
    """One JSON object per step in RUN_DIR/metrics.jsonl: the record reports are made from."""

    def __init__(self, out_dir: Path):
        self.file = open(out_dir / "metrics.jsonl", "a", buffering=1)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        clean = {k: (v if isinstance(v, (int, float)) and math.isfinite(v) else None) for k, v in metrics.items()}
        self.file.write(json.dumps({"step": step, **clean}) + "\n")

    def close(self) -> None:
        self.file.close()


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

        self.progress = Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                 TextColumn("{task.fields[headline]}"))
        self.task = self.progress.add_task("train", total=total_steps, headline="")
        self.latest: dict[str, float] = {}
        self.progress.start()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.latest.update({k: v for k, v in metrics.items() if k in HEADLINE})
        headline = "  ".join(f"{k.split('/')[-1]}={v:.3g}" for k, v in self.latest.items())
        self.progress.update(self.task, completed=step, headline=headline)

    def close(self) -> None:
        self.progress.stop()


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
