"""Rewards for images (DDPO's tasks): one uint8 image [H, W, 3] and its prompt -> a float.

Rollout workers call them in reward processes with a time limit (``rollouts.reward_pool``), so a
reward must be picklable (built-ins are; a user's must be importable by module path); scorer models
load lazily, once per process, under a lock (a reward may also be called from threads).
"""

from __future__ import annotations

import abc
import importlib
import io
import threading
from pathlib import Path

import numpy as np

IMAGE_REWARDS = ("jpeg_compressibility", "jpeg_incompressibility", "aesthetic")
AESTHETIC_HEAD = "aesthetic_head.safetensors"


def check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"image rewards take uint8 [H, W, 3] arrays, got {desc}")
    return image


class ImageReward(abc.ABC):
    """Scores one generated image given the prompt it was generated for."""

    @abc.abstractmethod
    def __call__(self, image: np.ndarray, prompt: str) -> float:
        """``image``: uint8 [H, W, 3] RGB; ``prompt``: the text (or class name) it was sampled for."""


def jpeg_size_kb(image: np.ndarray, quality: int = 95) -> float:
    """Size in kB (1000 bytes) of the image encoded as JPEG at ``quality``."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(check_image(image)).save(buffer, format="JPEG", quality=quality)
    return buffer.tell() / 1000


class JpegCompressibility(ImageReward):
    """-(JPEG size in kB at quality 95): Black et al. 2023's compressibility reward."""

    def __call__(self, image: np.ndarray, prompt: str) -> float:
        return -jpeg_size_kb(image)


class JpegIncompressibility(ImageReward):
    """+(JPEG size in kB at quality 95): the opposite objective, from the same paper."""

    def __call__(self, image: np.ndarray, prompt: str) -> float:
        return jpeg_size_kb(image)


class AestheticScore(ImageReward):
    """An aesthetic predictor from a local directory: a CLIP model (``CLIPModel`` + ``CLIPImageProcessor``
    files) and ``aesthetic_head.safetensors``, a stack of linear layers (``layers.{i}.weight/bias``, applied in
    order) over the L2-normalised CLIP image embedding, as the LAION predictor is evaluated."""

    def __init__(self, path: str):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._parts = None

    def __getstate__(self) -> dict:
        return {"path": self.path}  # a reward process loads the model itself, on first use

    def __setstate__(self, state: dict) -> None:
        self.__init__(str(state["path"]))

    def _load(self):
        import torch
        from safetensors.torch import load_file
        from transformers import CLIPImageProcessor, CLIPModel

        head_file = self.path / AESTHETIC_HEAD
        if not (self.path / "config.json").exists() or not head_file.exists():
            raise FileNotFoundError(f"task.reward_model_path = {str(self.path)!r} needs a CLIP model directory "
                                    f"(config.json, weights, preprocessor_config.json) and {AESTHETIC_HEAD}")
        clip = CLIPModel.from_pretrained(self.path).eval()
        processor = CLIPImageProcessor.from_pretrained(self.path)
        state = load_file(head_file)
        indices = sorted({int(k.split(".")[1]) for k in state if k.startswith("layers.")})
        layers = [(state[f"layers.{i}.weight"], state[f"layers.{i}.bias"]) for i in indices]
        if not layers or layers[0][0].shape[1] != clip.config.projection_dim:
            width = layers[0][0].shape[1] if layers else None
            raise ValueError(f"task.reward_model_path: {AESTHETIC_HEAD} takes inputs of width {width}, but the CLIP "
                             f"model's projection_dim is {clip.config.projection_dim}; head and CLIP must match")
        return torch, clip, processor, layers

    def __call__(self, image: np.ndarray, prompt: str) -> float:
        with self._lock:
            if self._parts is None:
                self._parts = self._load()
            torch, clip, processor, layers = self._parts
            with torch.no_grad():
                pixels = processor(images=check_image(image), return_tensors="pt").pixel_values
                features = image_embedding(clip.get_image_features(pixel_values=pixels))
                x = features / features.norm(dim=-1, keepdim=True)
                for weight, bias in layers:
                    x = x @ weight.T + bias
            return float(x.reshape(-1)[0])


def image_embedding(output):
    """The projected CLIP image embedding: transformers 4 returns it as a tensor, 5 as the pooler output."""
    if hasattr(output, "pooler_output"):
        return output.pooler_output
    return output


class _FunctionReward(ImageReward):
    def __init__(self, fn):
        self.fn = fn

    def __call__(self, image: np.ndarray, prompt: str) -> float:
        return float(self.fn(image, prompt))


def import_reward(name: str):
    """What ``task.reward = "package.module:attr"`` names, imported (ValueError naming the key when it cannot be)."""
    module_name, attr = name.split(":", 1)
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"task.reward = {name!r} cannot be imported ({exc}); give package.module:name of an "
                         "importable ImageReward or function") from None


def make_image_reward(name: str, model_path: str = "") -> ImageReward:
    """The reward ``task.reward`` names: a built-in, or ``package.module:attr`` of the user's (an ImageReward
    class, an instance, or a function ``(image, prompt) -> float``)."""
    if name == "jpeg_compressibility":
        return JpegCompressibility()
    if name == "jpeg_incompressibility":
        return JpegIncompressibility()
    if name == "aesthetic":
        if not model_path:
            raise ValueError("task.reward = 'aesthetic' needs task.reward_model_path (a local CLIP directory with "
                             f"{AESTHETIC_HEAD})")
        return AestheticScore(model_path)
    if ":" in name:
        target = import_reward(name)
        if isinstance(target, type) and issubclass(target, ImageReward):
            return target()
        if isinstance(target, ImageReward):
            return target
        if callable(target):
            return _FunctionReward(target)
        raise ValueError(f"task.reward = {name!r} is a {type(target).__name__}, not an ImageReward or a function")
    raise ValueError(f"task.reward = {name!r}; expected one of {', '.join(IMAGE_REWARDS)} or 'package.module:name'")
