"""What flows between rollout workers, the controller and learners.

Every action (a generated token, a denoising step) carries the policy version
that produced it: weights change under in-flight rollouts, so one sample can
span several versions.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field
from typing import Union

import numpy as np
import torch


FAILED_REWARD = math.nan  # the reward of a sample whose reward computation failed: it has no score


def _check_reward(kind: str, reward: float) -> None:
    if math.isinf(reward):
        raise ValueError(f"{kind}: reward must be finite, or NaN (FAILED_REWARD) when scoring failed; got {reward}")


@dataclass(frozen=True)
class Trajectory:
    """One sampled completion of one prompt; ``reward`` is NaN (``FAILED_REWARD``) when scoring it failed.

    A multi-turn episode is one trajectory too: ``output_ids`` holds the policy's turns and the environment's
    observations between them, and ``policy_mask`` says which tokens the policy sampled (only those are
    trained on; an observation token's log-prob is 0 and its version that of the policy token before it).
    """

    prompt_ids: tuple[int, ...]
    output_ids: tuple[int, ...]
    logprobs: tuple[float, ...]  # behaviour log-probability of each output token
    versions: tuple[int, ...]  # policy version that produced each output token
    reward: float
    text: str = ""
    finish_reason: str = ""
    policy_mask: tuple[bool, ...] | None = None  # None: every output token is the policy's

    def __post_init__(self):
        n = len(self.output_ids)
        if len(self.logprobs) != n or len(self.versions) != n:
            raise ValueError(
                f"Trajectory: output_ids, logprobs and versions must have one entry per token, got "
                f"{n}, {len(self.logprobs)}, {len(self.versions)}"
            )
        if self.policy_mask is not None and len(self.policy_mask) != n:
            raise ValueError(f"Trajectory: policy_mask has {len(self.policy_mask)} entries for {n} output tokens")
        _check_reward("Trajectory", self.reward)


    @property
    def reward_ok(self) -> bool:
        """Whether the reward was computed: a failed one is no score, and the sample is not trained on."""
        return not math.isnan(self.reward)

    @property
    def num_actions(self) -> int:
        """Tokens the policy sampled (all output tokens but a multi-turn episode's observations)."""
        return len(self.output_ids) if self.policy_mask is None else sum(self.policy_mask)


@dataclass(frozen=True)
class ChainTrajectory:
    """One sampled denoising chain, DDPO's trajectory (ALGORITHMS.md §4).

    ``latents`` [S + 1, C, H, W] holds x_T ... x_0; step k goes from ``latents[k]`` at
    ``timesteps[k]`` to ``latents[k + 1]`` with behaviour log-probability ``logprobs[k]``
    under policy version ``versions[k]``. The reward was computed on the decoded x_0 (NaN,
    ``FAILED_REWARD``, when that failed).
    """

    prompt: str
    latents: torch.Tensor
    timesteps: tuple[int, ...]
    logprobs: tuple[float, ...]
    versions: tuple[int, ...]
    reward: float

    def __post_init__(self):
        steps = len(self.timesteps)
        if len(self.logprobs) != steps or len(self.versions) != steps or self.latents.shape[0] != steps + 1:
            raise ValueError(
                f"ChainTrajectory: need S timesteps, logprobs and versions and S + 1 latents, got {steps}, "
                f"{len(self.logprobs)}, {len(self.versions)} and {self.latents.shape[0]}"
            )
        _check_reward("ChainTrajectory", self.reward)

    @property
    def reward_ok(self) -> bool:
        """Whether the reward was computed: a failed one is no score, and the chain is not trained on."""
        return not math.isnan(self.reward)

    @property
    def num_actions(self) -> int:
        return len(self.timesteps)


AnyTrajectory = Union[Trajectory, ChainTrajectory]


@dataclass(frozen=True)
class TrajectoryGroup:
    """The n samples of one prompt, as the staleness gate counts them (one unit)."""

    prompt_id: str
    trajectories: tuple[AnyTrajectory, ...]
    submit_version: int  # policy version when the group was submitted: its staleness start
    info: dict = field(default_factory=dict, compare=False)

    @property
    def rewards(self) -> list[float]:
        """The scores of the samples whose reward was computed (failed ones have none), in sample order."""
        return [t.reward for t in self.trajectories if t.reward_ok]

    @property
    def reward_ok(self) -> list[bool]:
        """One flag per sample: its reward was computed (see ``Trajectory.reward_ok``)."""
        return [t.reward_ok for t in self.trajectories]

    @property
    def num_actions(self) -> int:
        """Tokens generated, or denoising steps taken, by the whole group."""
        return sum(t.num_actions for t in self.trajectories)


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

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def num_actions(self) -> int:
        """Generated tokens the batch trains on."""
        return int(self.loss_mask.sum())

    def select(self, rows: torch.Tensor) -> "TrainBatch":
        """The batch restricted to ``rows`` (an index tensor)."""
        return TrainBatch(*(getattr(self, f)[rows] for f in _FIELDS))

    def split(self, parts: int) -> list["TrainBatch"]:
        """Row-wise split into ``parts`` near-equal batches (data-parallel ranks, micro-batches)."""
        rows = torch.arange(self.input_ids.shape[0])
        return [self.select(chunk) for chunk in torch.tensor_split(rows, parts) if len(chunk) > 0]


_FIELDS = ("input_ids", "attention_mask", "loss_mask", "behavior_logprobs", "advantages", "versions")


@dataclass(frozen=True)
class ChainBatch:
    """Denoising chains a DDPO learner trains on; rows are chains (ALGORITHMS.md §4).

    Shapes: ``latents`` [N, S + 1, C, H, W]; ``timesteps``, ``behavior_logprobs`` and
    ``versions`` [N, S]; ``advantages`` [N] (one per chain: the reward is the final image's);
    ``prompts`` one per row (the learner conditions on them as the sampler did).
    """

    latents: torch.Tensor
    timesteps: torch.Tensor
    behavior_logprobs: torch.Tensor
    versions: torch.Tensor
    advantages: torch.Tensor
    prompts: tuple[str, ...]

    def __post_init__(self):
        n, s = self.timesteps.shape
        for name in ("behavior_logprobs", "versions"):
            if getattr(self, name).shape != (n, s):
                raise ValueError(f"ChainBatch: {name} has shape {tuple(getattr(self, name).shape)}, timesteps "
                                 f"has {(n, s)}")
        if self.latents.shape[:2] != (n, s + 1) or self.advantages.shape != (n,) or len(self.prompts) != n:
            raise ValueError(f"ChainBatch: {n} chains of {s} steps need latents [{n}, {s + 1}, ...], advantages "
                             f"[{n}] and {n} prompts; got {tuple(self.latents.shape)}, "
                             f"{tuple(self.advantages.shape)}, {len(self.prompts)}")

    def __len__(self) -> int:
        return self.timesteps.shape[0]

    @property
    def num_actions(self) -> int:
        """Denoising steps the batch trains on."""
        return self.timesteps.numel()

    def select(self, rows: torch.Tensor) -> "ChainBatch":
        return ChainBatch(self.latents[rows], self.timesteps[rows], self.behavior_logprobs[rows], self.versions[rows],
                          self.advantages[rows], tuple(self.prompts[int(i)] for i in rows))

    def split(self, parts: int) -> list["ChainBatch"]:
        """Row-wise split into ``parts`` near-equal batches (data-parallel ranks, minibatches)."""
        rows = torch.arange(len(self))
        return [self.select(chunk) for chunk in torch.tensor_split(rows, parts) if len(chunk) > 0]


def _tensor_to_dict(t: torch.Tensor) -> dict:
    array = t.detach().cpu().numpy()
    return {"dtype": str(array.dtype), "shape": list(array.shape), "data": base64.b64encode(array.tobytes()).decode()}


def _tensor_from_dict(d: dict) -> torch.Tensor:
    array = np.frombuffer(base64.b64decode(d["data"]), dtype=d["dtype"]).reshape(d["shape"])
    return torch.from_numpy(array.copy())


def _trajectory_to_dict(t: AnyTrajectory) -> dict:
    reward = t.reward if t.reward_ok else None  # JSON has no NaN
    if isinstance(t, ChainTrajectory):
        return {"kind": "chain", "prompt": t.prompt, "latents": _tensor_to_dict(t.latents),
                "timesteps": list(t.timesteps), "logprobs": list(t.logprobs), "versions": list(t.versions),
                "reward": reward}
    out = {"kind": "text", "prompt_ids": list(t.prompt_ids), "output_ids": list(t.output_ids),
           "logprobs": list(t.logprobs), "versions": list(t.versions), "reward": reward, "text": t.text,
           "finish_reason": t.finish_reason}
    if t.policy_mask is not None:
        out["policy_mask"] = [int(m) for m in t.policy_mask]
    return out


def _trajectory_from_dict(t: dict) -> AnyTrajectory:
    reward = FAILED_REWARD if t["reward"] is None else t["reward"]
    if t.get("kind") == "chain":
        return ChainTrajectory(t["prompt"], _tensor_from_dict(t["latents"]), tuple(t["timesteps"]),
                               tuple(t["logprobs"]), tuple(t["versions"]), reward)
    mask = t.get("policy_mask")
    return Trajectory(tuple(t["prompt_ids"]), tuple(t["output_ids"]), tuple(t["logprobs"]), tuple(t["versions"]),
                      reward, t["text"], t["finish_reason"], None if mask is None else tuple(bool(m) for m in mask))


def group_to_dict(group: TrajectoryGroup) -> dict:
    """JSON-safe form of a group: floats survive JSON exactly (Python writes the shortest repr) and
    tensors travel as their raw bytes, so a checkpoint's buffer is restored bit for bit."""
    return {"prompt_id": group.prompt_id, "submit_version": group.submit_version, "info": group.info,
            "trajectories": [_trajectory_to_dict(t) for t in group.trajectories]}


def group_from_dict(data: dict) -> TrajectoryGroup:
    """Inverse of ``group_to_dict``."""
    trajectories = tuple(_trajectory_from_dict(t) for t in data["trajectories"])
    return TrajectoryGroup(data["prompt_id"], trajectories, data["submit_version"], dict(data["info"]))
