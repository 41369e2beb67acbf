"""Turn trajectory groups into the padded tensors a learner trains on."""

from __future__ import annotations

from typing import Sequence

import torch

from areal.algos.advantages import make_advantage_estimator
from areal.types import TrainBatch, TrajectoryGroup


def build_train_batch(groups: Sequence[TrajectoryGroup], advantage: str, pad_id: int) -> TrainBatch:
    """Right-padded [B, T] rows of prompt + completion, with per-token advantages.

    Advantages are computed here, from the group rewards [G, n], by the estimator
    registered under ``advantage`` (``algo.advantage``): the learner only executes them.
    """
    if not groups:
        raise ValueError("build_train_batch: no groups to train on")
    sizes = {len(g.trajectories) for g in groups}
    if len(sizes) != 1:
        raise ValueError(f"build_train_batch: every group needs the same number of samples, got sizes {sorted(sizes)}")
    trajectories = [t for g in groups for t in g.trajectories]
    width = max(len(t.prompt_ids) + len(t.output_ids) for t in trajectories)
    rows = len(trajectories)
    input_ids = torch.full((rows, width), pad_id, dtype=torch.long)
    attention = torch.zeros(rows, width, dtype=torch.long)
    loss_mask = torch.zeros(rows, width, dtype=torch.bool)
    behavior = torch.zeros(rows, width, dtype=torch.float32)
    versions = torch.full((rows, width), -1, dtype=torch.long)
    for i, t in enumerate(trajectories):
        p, o = len(t.prompt_ids), len(t.output_ids)
        input_ids[i, : p + o] = torch.tensor(t.prompt_ids + t.output_ids, dtype=torch.long)
        attention[i, : p + o] = 1
        loss_mask[i, p : p + o] = True
        behavior[i, p : p + o] = torch.tensor(t.logprobs, dtype=torch.float32)
        versions[i, p : p + o] = torch.tensor(t.versions, dtype=torch.long)
    rewards = torch.tensor([g.rewards for g in groups], dtype=torch.float32)
    advantages = make_advantage_estimator(advantage)(rewards, loss_mask)
    return TrainBatch(input_ids, attention, loss_mask, behavior, advantages, versions)
