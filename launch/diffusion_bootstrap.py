"""Warm start for the diffusion demo: a tiny class-conditional UNet trained briefly as a DDPM.

No pretrained diffusion model exists here, and DDPO on a random denoiser samples noise
with nothing to improve. So the demo's policy is a small pixel-space UNet trained on
procedural shapes (``launch.procedural_images``) with class labels as prompts, then
saved as a diffusers pipeline (``DDPMPipeline`` layout: unet/, scheduler/ with a DDIM
config, plus class_labels.json). One extra class index is the null class, used for 10%
of training samples, so classifier-free guidance works.

The result is cached like the LM bootstrap: ``bootstrap.json`` records the settings and
their hash; a later call with the same settings returns the cached pipeline.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from launch.procedural_images import CLASS_NAMES, make_dataset

log = logging.getLogger(__name__)
SETTINGS_FILE = "bootstrap.json"
FORMAT_VERSION = 1  # bump when the recipe changes, so old caches are not reused


def diffusion_model_dir(seed: int, size: int) -> Path:
    """Where the tiny diffusion pipeline is cached: $AREAL_CACHE or ~/.cache/areal."""
    root = Path(os.environ.get("AREAL_CACHE", Path.home() / ".cache" / "areal"))
    return root / f"tiny-shapes-ddpm-seed{seed}-{size}px"


def build_unet(size: int):
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=size, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(16, 32, 64), norm_num_groups=8, num_class_embeds=len(CLASS_NAMES) + 1,
                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))


def sampling_scheduler():
    """DDIM over the training betas; clip_sample keeps x0 in the pixel range; the last step stays stochastic."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True, clip_sample_range=1.0,
                         set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")


def _cached(out_dir: Path, digest: str) -> bool:
    try:
        recorded = json.loads((out_dir / SETTINGS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return recorded.get("sha256") == digest and (out_dir / "unet" / "config.json").exists()


def train_ddpm(unet, images: torch.Tensor, labels: torch.Tensor, *, steps: int, batch_size: int, lr: float,
               seed: int, null_prob: float = 0.1, ema_decay: float = 0.995):
    """Epsilon-prediction DDPM training; returns the EMA of the weights (better samples from a short run)."""
    from diffusers import DDPMScheduler

    noise_schedule = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    g = torch.Generator().manual_seed(seed)
    ema = copy.deepcopy(unet).requires_grad_(False)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(i / steps, 1.0))))
    null = len(CLASS_NAMES)
    start, losses = time.time(), []
    for step in range(steps):
        idx = torch.randint(0, len(images), (batch_size,), generator=g)
        x0, y = images[idx], labels[idx].clone()
        y[torch.rand(batch_size, generator=g) < null_prob] = null
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (batch_size,), generator=g)
        loss = torch.nn.functional.mse_loss(unet(noise_schedule.add_noise(x0, noise, t), t, class_labels=y).sample,
                                            noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            for e, p in zip(ema.parameters(), unet.parameters()):
                e.lerp_(p, 1 - ema_decay)
        losses.append(loss.item())
        if (step + 1) % max(1, steps // 10) == 0:
            log.info("diffusion bootstrap: step %d/%d, loss %.4f (%.0fs)", step + 1, steps,
                     sum(losses[-50:]) / len(losses[-50:]), time.time() - start)
    return ema, sum(losses[-50:]) / max(1, len(losses[-50:]))


def bootstrap_diffusion(out_dir: str | Path, *, seed: int = 0, size: int = 32, train_steps: int = 2000,
                        batch_size: int = 32, lr: float = 5e-4, dataset_size: int = 6000) -> Path:
    """The tiny class-conditional pipeline at ``out_dir``: reused if cached with these settings, else trained
    (a few minutes on 2 CPU cores) and written atomically (readers never see half a pipeline)."""
    from diffusers import DDPMPipeline

    out_dir = Path(out_dir)
    settings = {"format": FORMAT_VERSION, "seed": seed, "size": size, "train_steps": train_steps,
                "batch_size": batch_size, "lr": lr, "dataset_size": dataset_size, "classes": list(CLASS_NAMES)}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    if _cached(out_dir, digest):
        return out_dir
    log.info("diffusion bootstrap: training a tiny class-conditional DDPM into %s (cached afterwards)", out_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    try:
        torch.manual_seed(seed)
        images, labels = make_dataset(dataset_size, seed, size)
        unet, final_loss = train_ddpm(build_unet(size), images, labels, steps=train_steps, batch_size=batch_size,
                                      lr=lr, seed=seed)
    finally:
        torch.set_num_threads(threads)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.saving-"))
    DDPMPipeline(unet=unet, scheduler=sampling_scheduler()).save_pretrained(tmp)
    (tmp / "class_labels.json").write_text(json.dumps({"labels": list(CLASS_NAMES), "null_class": len(CLASS_NAMES)}))
    (tmp / SETTINGS_FILE).write_text(json.dumps({"settings": settings, "sha256": digest,
                                                 "final_loss": final_loss}, indent=1))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir
