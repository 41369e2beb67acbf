"""The inference-engine interface every backend implements (DESIGN.md "Engine")."""

from __future__ import annotations

import abc
from dataclasses import dataclass


@dataclass(frozen=True)
class SamplingConfig:
    """How one request is sampled."""

    max_new_tokens: int
    min_new_tokens: int = 0  # EOS is suppressed until this many tokens exist
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class Completion:
    """One sampled continuation with what the learner needs from the sampler."""

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]  # log-probability of each sampled token under the sampling policy
    versions: tuple[int, ...]  # weight version that produced each token
    text: str
    finish_reason: str


class Engine(abc.ABC):
    """Generates completions continuously; weights can change under in-flight requests."""

    @abc.abstractmethod
    async def generate(self, prompt_ids: list[int], sampling: SamplingConfig, n: int = 1) -> list[Completion]:
        """n independent samples of one prompt."""

    @abc.abstractmethod
    async def update_weights(self, weights_dir: str, version: int) -> float:
        """Pause in-flight requests, load the HF-format weights in ``weights_dir`` in place,
        tag later tokens with ``version``, resume; returns the seconds the update took."""

    @property
    @abc.abstractmethod
    def version(self) -> int:
        """Version of the weights currently loaded."""

    async def close(self) -> None:
        """Release the engine's processes and memory."""
