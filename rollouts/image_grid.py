"""Sample grids a person can look at: evaluation images tiled into one PNG per evaluation."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np


def tile(images: Sequence[np.ndarray], columns: int = 0, pad: int = 2, scale: int = 1) -> np.ndarray:
    """uint8 [H, W, 3] images (same size) in a grid with ``pad`` white pixels between them, each enlarged
    ``scale`` times (nearest neighbour: tiny images stay crisp)."""
    if not images:
        raise ValueError("tile: no images")
    h, w, c = images[0].shape
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    h, w = h * scale, w * scale
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        big = image.repeat(scale, axis=0).repeat(scale, axis=1)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = big
    return grid


def save_grid(images: Sequence[np.ndarray], path: str | Path, columns: int = 0) -> Path:
    """Write the grid as a PNG (images smaller than 128 px are enlarged so they can be seen)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scale = max(1, 128 // max(images[0].shape[:2]))
    Image.fromarray(tile(images, columns, scale=scale)).save(path)
    return path
