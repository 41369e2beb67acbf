"""Prompts for a diffusion policy, scored by an image reward (DDPO's tasks)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from rollouts.tasks.base import ScoredTask, TaskSample


def load_prompts(path: str, model_path: str) -> list[str]:
    """One prompt per non-empty line of ``path``; without a path, the class names of a class-conditional
    pipeline (its class_labels.json)."""
    if path:
        prompts = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
        if not prompts:
            raise ValueError(f"task.path = {path!r} holds no prompts; write one prompt per line")
        return prompts
    labels = Path(model_path) / "class_labels.json"
    if not labels.exists():
        raise ValueError(f"task.path is empty and {model_path} has no class_labels.json: give task.path, a text "
                         "file with one prompt per line")
    return list(json.loads(labels.read_text())["labels"])


class ImagePromptTask(ScoredTask):
    """Train prompts as given; evaluation cycles through the same prompts ``eval_size`` times, each image from a
    fixed seed, so successive evaluations see the same noise and differ only by the weights."""

    def __init__(self, prompts: Sequence[str], reward, eval_size: int):
        super().__init__(train=[TaskSample(f"p{i}", p, "") for i, p in enumerate(prompts)],
                         eval=[TaskSample(f"eval{j}", prompts[j % len(prompts)], "") for j in range(eval_size)])
        self.reward = reward

    def score(self, output: np.ndarray, sample: TaskSample) -> float:
        return float(self.reward(output, sample.prompt))
