"""A continuous-batching DDIM sampler that records what DDPO trains on (ALGORITHMS.md §4).

Every chain keeps its own torch.Generator, so its noise (x_T and every step's z)
depends on its seed alone, not on which other chains shared its batch (the chain
itself then matches up to the rounding of batched kernels, ~1e-5 here). A single
loop steps up to ``diffusion.max_batch`` chains at a time, each at its own
timestep (the denoiser and ``ddim_step_with_logprob`` take per-sample
timesteps), so requests join and leave between steps instead of waiting for a
whole batch: the diffusion counterpart of an LLM engine's continuous batching.
Weight updates take the same lock as a step, so they land between two steps and
every step records the policy version that produced it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from areal.algos.ddpo import ddim_step_with_logprob
from areal.config import DiffusionConfig
from areal.models.diffusion_policy import PAYLOAD_FILE, DiffusionPolicy
from rollouts.engines.base import PolicyBackend

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Chain:
    """One finished chain: x_T ... x_0, the step timesteps, behaviour log-probs and versions, the image."""

    latents: torch.Tensor  # [S + 1, C, H, W]
    timesteps: tuple[int, ...]
    logprobs: tuple[float, ...]
    versions: tuple[int, ...]
    image: np.ndarray  # uint8 [H, W, 3]


@dataclass
class _Running:
    cond: torch.Tensor | None  # this chain's conditioning row (None: unconditional)
    generator: torch.Generator
    latents: list[torch.Tensor]
    done: asyncio.Future
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)


def chain_seed(seed: int, index: int) -> int:
    """Seed of chain ``index`` of a request: hashed, so requests with adjacent seeds share no chains."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


class DiffusionSampler(PolicyBackend):
    """Samples DDIM chains from a diffusers pipeline while its denoiser's weights are updated in place."""

    def __init__(self, model_path: str, cfg: DiffusionConfig, device: str = "cpu"):
        self.cfg = cfg
        self.policy = DiffusionPolicy(model_path, num_steps=cfg.num_steps, guidance_scale=cfg.guidance_scale,
                                      lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha, device=device)
        self.policy.unet.eval()
        self.timesteps = [int(t) for t in self.policy.scheduler.timesteps]
        self._version = 0
        self._running: list[_Running] = []
        self._lock = asyncio.Lock()  # held by one denoising step or one weight update
        self._loop: asyncio.Task | None = None

    @property
    def version(self) -> int:
        return self._version

    async def sample(self, prompt: str, n: int, seed: int) -> list[Chain]:
        """n chains for ``prompt``; chain i draws all its noise from ``chain_seed(seed, i)``."""
        cond = await asyncio.to_thread(self.policy.condition, [prompt] * n)
        loop = asyncio.get_running_loop()
        chains = []
        for i in range(n):
            generator = torch.Generator().manual_seed(chain_seed(seed, i))
            start = torch.randn(self.policy.latent_shape, generator=generator)
            chains.append(_Running(None if cond is None else cond[i: i + 1], generator, [start], loop.create_future()))
        self._running.extend(chains)
        if self._loop is None or self._loop.done():
            self._loop = asyncio.create_task(self._step_forever())
        try:
            return list(await asyncio.gather(*(c.done for c in chains)))
        finally:  # cancelled (the caller gave up on this request): stop spending steps on its chains
            self._running = [c for c in self._running if c not in chains]

    async def _step_forever(self) -> None:
        while self._running:
            batch = self._running[: self.cfg.max_batch]  # oldest first: finished chains leave soonest
            try:
                async with self._lock:
                    finished = await asyncio.to_thread(self._step, batch)
            except Exception as exc:  # noqa: BLE001 - the requests waiting on these chains get the error
                log.exception("denoising step failed")
                for c in batch:
                    if not c.done.done():
                        c.done.set_exception(exc)
                self._running = [c for c in self._running if c not in batch]
                continue
            for c, result in finished:
                if not c.done.done():
                    c.done.set_result(result)
            finished_ids = {id(c) for c, _ in finished}
            self._running = [c for c in self._running if id(c) not in finished_ids]

    def _step(self, batch: list[_Running]) -> list[tuple[_Running, Chain]]:
        """One denoising step of every chain in ``batch``; returns the chains that reached x_0."""
        policy = self.policy
        x = torch.stack([c.latents[-1] for c in batch]).to(policy.device)
        t = torch.tensor([self.timesteps[len(c.latents) - 1] for c in batch], device=policy.device)
        cond = None if batch[0].cond is None else torch.cat([c.cond for c in batch])
        noise = torch.stack([torch.randn(x.shape[1:], generator=c.generator) for c in batch])
        with torch.no_grad():
            eps = policy.predict_noise(x, t, cond)
            x_prev, logp = ddim_step_with_logprob(policy.scheduler, eps, t, x, eta=self.cfg.eta, noise=noise)
        for c, latent, lp in zip(batch, x_prev.cpu(), logp.tolist()):
            c.latents.append(latent)
            c.logprobs.append(lp)
            c.versions.append(self._version)
        done = [c for c in batch if len(c.latents) == len(self.timesteps) + 1]
        if not done:
            return []
        images = policy.decode(torch.stack([c.latents[-1] for c in done]).to(policy.device)).numpy()
        return [(c, Chain(torch.stack(c.latents), tuple(self.timesteps), tuple(c.logprobs), tuple(c.versions), image))
                for c, image in zip(done, images)]

    async def update_weights(self, weights_dir: str, version: int) -> float:
        """Load the shipped denoiser weights between two steps; later steps carry ``version``."""
        from safetensors.torch import load_file

        start = time.perf_counter()
        state = await asyncio.to_thread(load_file, str(Path(weights_dir) / PAYLOAD_FILE))
        async with self._lock:
            await asyncio.to_thread(self.policy.load_trainable, state)
            self._version = version
        return time.perf_counter() - start

    async def close(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
        for c in self._running:
            if not c.done.done():
                c.done.cancel()
        self._running = []
