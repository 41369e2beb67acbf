"""What flows between rollout workers, the controller and learners.

Every generated token carries the policy version that produced it: with
interruptible generation one completion can span several versions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Trajectory:
    """One sampled completion of one prompt."""

    prompt_ids: tuple[int, ...]
    output_ids: tuple[int, ...]
    logprobs: tuple[float, ...]  # behaviour log-probability of each output token
    versions: tuple[int, ...]  # policy version that produced each output token
    reward: float
    text: str = ""
    finish_reason: str = ""

    def __post_init__(self):
        n = len(self.output_ids)
        if len(self.logprobs) != n or len(self.versions) != n:
            raise ValueError(
                f"Trajectory: output_ids, logprobs and versions must have one entry per token, got "
                f"{n}, {len(self.logprobs)}, {len(self.versions)}"
            )


@dataclass(frozen=True)
class TrajectoryGroup:
    """The n samples of one prompt, as the staleness gate counts them (one unit)."""

    prompt_id: str
    trajectories: tuple[Trajectory, ...]
    submit_version: int  # policy version when the group was submitted: its staleness start
    info: dict = field(default_factory=dict, compare=False)

    @property
    def rewards(self) -> list[float]:
        return [t.reward for t in self.trajectories]

    @property
    def num_output_tokens(self) -> int:
        return sum(len(t.output_ids) for t in self.trajectories)


@dataclass(frozen=True)
class TrainBatch:
    """Padded tensors a learner trains on; rows are trajectories, prompts included.

    Shapes: ``input_ids``, ``attention_mask``, ``loss_mask``, ``behavior_logprobs``,
    ``advantages`` and ``versions`` are all [B, T]; position t of ``loss_mask``
    marks that token t is a generated token (its log-probability is predicted
    from position t - 1).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    behavior_logprobs: torch.Tensor
    advantages: torch.Tensor
    versions: torch.Tensor

    def __post_init__(self):
        shape = self.input_ids.shape
        for name in ("attention_mask", "loss_mask", "behavior_logprobs", "advantages", "versions"):
            if getattr(self, name).shape != shape:
                raise ValueError(
                    f"TrainBatch: {name} has shape {tuple(getattr(self, name).shape)}, input_ids has {tuple(shape)}"
                )

    @property
    def num_tokens(self) -> int:
        return int(self.loss_mask.sum())

    def select(self, rows: torch.Tensor) -> "TrainBatch":
        """The batch restricted to ``rows`` (an index tensor)."""
        return TrainBatch(*(getattr(self, f)[rows] for f in _FIELDS))

    def split(self, parts: int) -> list["TrainBatch"]:
        """Row-wise split into ``parts`` near-equal batches (data-parallel ranks, micro-batches)."""
        rows = torch.arange(self.input_ids.shape[0])
        return [self.select(chunk) for chunk in torch.tensor_split(rows, parts) if len(chunk) > 0]


_FIELDS = ("input_ids", "attention_mask", "loss_mask", "behavior_logprobs", "advantages", "versions")


def group_to_dict(group: TrajectoryGroup) -> dict:
    """JSON-safe form of a group (floats survive JSON exactly: Python writes the shortest repr)."""
    return {"prompt_id": group.prompt_id, "submit_version": group.submit_version, "info": group.info,
            "trajectories": [{"prompt_ids": list(t.prompt_ids), "output_ids": list(t.output_ids),
                              "logprobs": list(t.logprobs), "versions": list(t.versions), "reward": t.reward,
                              "text": t.text, "finish_reason": t.finish_reason} for t in group.trajectories]}


def group_from_dict(data: dict) -> TrajectoryGroup:
    """Inverse of ``group_to_dict``."""
    trajectories = tuple(
        Trajectory(tuple(t["prompt_ids"]), tuple(t["output_ids"]), tuple(t["logprobs"]), tuple(t["versions"]),
                   t["reward"], t["text"], t["finish_reason"])
        for t in data["trajectories"]
    )
    return TrajectoryGroup(data["prompt_id"], trajectories, data["submit_version"], dict(data["info"]))
