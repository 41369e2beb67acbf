"""Class-labelled procedural images for the tiny diffusion demo (no dataset hub is reachable here).

Each class is a shape or a pattern; backgrounds and fills vary in texture (flat,
gradient, noise of random strength, speckle) on purpose: the DDPO demo rewards small
JPEG files, and RL can only shift the model towards smooth images if it has learned
both smooth and textured ones.
"""

from __future__ import annotations

import numpy as np
import torch

CLASS_NAMES = ("circle", "square", "triangle", "cross", "stripes", "checker")


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, 3).astype(np.float32)


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A float [size, size, 3] surface: flat, a two-colour gradient, noisy, or speckled."""
    base = np.broadcast_to(_colour(rng), (size, size, 3)).copy()
    kind = rng.integers(0, 4)
    if kind == 1:
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
        ramp = (np.cos(angle) * xx + np.sin(angle) * yy)
        ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1e-6)
        base = base * (1 - ramp[..., None]) + _colour(rng) * ramp[..., None]
    elif kind == 2:
        base += rng.normal(0, rng.uniform(10, 60), (size, size, 3))
    elif kind == 3:
        speckle = rng.random((size, size)) < rng.uniform(0.1, 0.35)
        base[speckle] = _colour(rng)
    return base


def _mask(label: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """Where the class's foreground is, as a bool [size, size]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = rng.uniform(0.3, 0.7, 2) * size
    r = rng.uniform(0.18, 0.32) * size
    name = CLASS_NAMES[label]
    if name == "circle":
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    if name == "square":
        return (abs(yy - cy) <= r * 0.85) & (abs(xx - cx) <= r * 0.85)
    if name == "triangle":  # apex up: inside when below the apex and within the widening sides
        top = cy - r
        return (yy >= top) & (yy <= cy + r) & (abs(xx - cx) <= (yy - top) * 0.6)
    if name == "cross":
        arm = max(1.5, r * 0.3)
        return ((abs(yy - cy) <= arm) & (abs(xx - cx) <= r)) | ((abs(xx - cx) <= arm) & (abs(yy - cy) <= r))
    period = rng.integers(4, 9)
    if name == "stripes":
        coord = xx if rng.random() < 0.5 else yy
        return (coord // (period / 2)) % 2 == 0
    return ((yy // (period / 2)) + (xx // (period / 2))) % 2 == 0  # checker


def render(label: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """One uint8 [size, size, 3] image of class ``label``."""
    background, foreground = _texture(rng, size), _texture(rng, size)
    # keep the shape visible: push the fill away from the background's mean brightness
    gap = foreground.mean() - background.mean()
    if abs(gap) < 60:
        foreground += (60 - abs(gap)) * (1 if gap >= 0 else -1)
    image = np.where(_mask(label, rng, size)[..., None], foreground, background)
    return np.clip(image, 0, 255).round().astype(np.uint8)


def make_dataset(n: int, seed: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(images float32 [n, 3, size, size] in [-1, 1], labels int64 [n]); classes balanced, deterministic."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASS_NAMES)
    rng.shuffle(labels)
    images = np.stack([render(int(label), rng, size) for label in labels])
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return pixels, torch.from_numpy(labels).long()
