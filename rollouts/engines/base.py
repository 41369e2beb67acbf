"""The inference-backend interfaces (DESIGN.md "Engine"): weight updates for all, generation for text."""

from __future__ import annotations

import abc
from dataclasses import dataclass


@dataclass(frozen=True)
class SamplingConfig:
    """How one request is sampled."""

    max_new_tokens: int
    # > 0: generate exactly this many tokens, on past EOS; the completion's text ends at the first EOS (what
    # follows is filler the reward never sees); emulates long outputs on a task whose answers are short
    forced_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class BucketFeed:
    """One version's bucket files (``areal.weight_sync``), in load order, as an engine reads them.

    ``consume``: staged copies, deleted once read (a learner on another node); otherwise the learner's own
    files, read in place. A staged file appears complete (renamed into place) within ``wait_s`` or the load
    fails; ``abort_path`` appears when whoever feeds the files gave up, so the engine stops waiting at once.
    """

    paths: tuple[str, ...]
    names: tuple[tuple[str, ...], ...]  # the tensors of each file, in load order
    version: int
    consume: bool = False
    abort_path: str = ""
    wait_s: float = 0.0

    def __post_init__(self):
        if not self.paths or len(self.paths) != len(self.names):
            raise ValueError(f"BucketFeed of version {self.version}: {len(self.paths)} paths for "
                             f"{len(self.names)} name lists; expected as many, at least one")


@dataclass(frozen=True)
class LoraAdapter:
    """One version as a PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``) for an engine
    that serves LoRA requests on its base model; the engine owns the folder and deletes it once it retires the
    version (no request in flight uses it and a newer one is loaded)."""

    path: str
    version: int


@dataclass(frozen=True)
class Completion:
    """One sampled continuation with what the learner needs from the sampler."""

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]  # log-probability of each sampled token under the sampling policy
    versions: tuple[int, ...]  # weight version that produced each token
    text: str
    finish_reason: str


class PolicyBackend(abc.ABC):
    """An inference backend holding one version of the policy's weights; they change under in-flight work."""

    @abc.abstractmethod
    async def update_weights(self, weights: str | BucketFeed | LoraAdapter, version: int) -> float:
        """Pause in-flight work, load the weights (a model folder, or a feed of buckets for engines that
        stream them) in place, tag later actions with ``version``, resume; returns the seconds it took. An
        engine serving LoRA adapters takes a ``LoraAdapter`` instead, for requests that start from then on."""

    @property
    @abc.abstractmethod
    def version(self) -> int:
        """Version of the weights currently loaded."""

    async def close(self) -> None:
        """Release the engine's processes and memory."""


class Engine(PolicyBackend):
    """A text engine: generates completions continuously (weights are Hugging Face model files)."""

    @abc.abstractmethod
    async def generate(self, prompt_ids: list[int], sampling: SamplingConfig, n: int = 1) -> list[Completion]:
        """n independent samples of one prompt."""
