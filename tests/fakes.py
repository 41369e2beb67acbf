"""Deterministic stand-ins for tests: a scripted engine and a tiny task. Named Fake, never shipped."""

from __future__ import annotations

import asyncio

from rollouts.engines.base import Completion, Engine, SamplingConfig
from rollouts.tasks.base import ScoredTask, TaskSample


class FakeEngine(Engine):
    """Answers every prompt with a scripted completion; logprobs and versions are recorded per token."""

    def __init__(self, script: dict[str, list[str]], tokenizer_decode, delay_s: float = 0.0):
        self.script = script  # prompt text -> completions returned in turn
        self.decode = tokenizer_decode
        self.delay_s = delay_s
        self._version = 0
        self.calls: list[tuple[list[int], SamplingConfig, int]] = []

    @property
    def version(self) -> int:
        return self._version

    async def generate(self, prompt_ids, sampling, n=1):
        self.calls.append((list(prompt_ids), sampling, n))
        await asyncio.sleep(self.delay_s)
        texts = self.script[self.decode(prompt_ids)]
        return [
            Completion(tuple(ord(ch) for ch in text), tuple(-0.1 for _ in text), tuple(self._version for _ in text),
                       text, "stop")
            for text in (texts[i % len(texts)] for i in range(n))
        ]

    async def update_weights(self, weights_dir, version):
        self._version = version
        return 0.0


class CharTokenizer:
    """Code points as token ids: enough for workflow tests."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids) -> str:
        return "".join(chr(i) for i in ids)


class FakeTask(ScoredTask):
    """Prompts whose reference is a fixed string; exact match scores 1."""

    def __init__(self, n_train: int = 4, raise_on: str | None = None):
        super().__init__(train=[TaskSample(f"t{i}", f"q{i}=", str(i)) for i in range(n_train)],
                         eval=[TaskSample("e0", "e0=", "0")])
        self.raise_on = raise_on

    def score(self, completion: str, sample: TaskSample) -> float:
        if completion == self.raise_on:
            raise RuntimeError("reward bug")
        if completion == "nan":
            return float("nan")
        return 1.0 if completion == sample.reference else 0.0


def random_lm_batch(model, seeds: list[int], prompt_len: int = 4, completion_len: int = 3, samples: int = 4,
                    varied: bool = False):
    """A GRPO train batch of one group per seed: random token prompts and completions, rewards 0/1
    alternating, behaviour logprobs scored by ``model`` on its own device (so the batch is on-policy for it).
    ``varied``: prompt and completion lengths drawn up to the given ones instead of fixed."""
    import torch

    from areal.batching import build_train_batch
    from areal.types import Trajectory, TrajectoryGroup
    from learners.lm_learner import token_logprobs

    device = next(model.parameters()).device
    groups = []
    for seed in seeds:
        gen = torch.Generator().manual_seed(seed)

        def length(most):
            return int(torch.randint(1, most + 1, (1,), generator=gen)) if varied else most

        prompt = tuple(torch.randint(10, 100, (length(prompt_len),), generator=gen).tolist())
        trajs = []
        for i in range(samples):
            completion = tuple(torch.randint(10, 100, (length(completion_len),), generator=gen).tolist())
            ids = torch.tensor([prompt + completion], device=device)
            with torch.no_grad():
                lp = token_logprobs(model, ids, torch.ones_like(ids), 1.0)[0, len(prompt):]
            trajs.append(Trajectory(prompt, completion, tuple(lp.tolist()), (0,) * len(completion), float(i % 2)))
        groups.append(TrajectoryGroup(str(seed), tuple(trajs), 0))
    return build_train_batch(groups, "grpo", pad_id=0)


class HostileTask(FakeTask):
    """FakeTask whose reward hangs on the completion "hang" and allocates 4 GB on "hog"."""

    def score(self, completion: str, sample: TaskSample) -> float:
        if completion == "hang":
            import time

            time.sleep(3600)
        if completion == "hog":
            return float(len(bytearray(4 << 30)))
        return super().score(completion, sample)


class FlakyImageReward:
    """Brightness; the first call (in a process) raises, the second returns NaN."""

    def __init__(self):
        self.calls = 0

    def __call__(self, image, prompt) -> float:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("scorer crashed")
        return float("nan") if self.calls == 2 else float(image.mean())


class BrokenImageReward:
    """An image reward that always raises."""

    def __call__(self, image, prompt) -> float:
        raise RuntimeError("scorer crashed")
