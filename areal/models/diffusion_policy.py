"""A local diffusers pipeline as an RL policy: the denoiser, its DDIM scheduler, and the frozen parts.

The sampler (rollouts/) and the DDPO learner (learners/) both build this object, so
the learner re-scores a chain under exactly the conditioning, guidance and scheduler
the sampler used. Three kinds of pipeline work:

* text-conditional (Stable Diffusion layout: unet, scheduler, vae, text_encoder, tokenizer),
* class-conditional pixel UNets (``num_class_embeds``; prompts are class names from
  ``class_labels.json``, whose ``null_class`` enables classifier-free guidance),
* unconditional UNets (one prompt, no guidance).

Only the denoiser is trained: all of it, or LoRA adapters injected with peft (the
pipeline's ``lora/adapter.safetensors`` holds trained adapters when present).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from areal.models.lora import inject_lora

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
UNET_WEIGHTS = "diffusion_pytorch_model.safetensors"
ADAPTER_FILE = "adapter.safetensors"
PAYLOAD_FILE = "denoiser.safetensors"  # what a learner ships to samplers: the trained weights (all, or the adapters)


class DiffusionPolicy:
    """Denoiser + DDIM scheduler + conditioning + decoder of one diffusers pipeline directory."""

    def __init__(self, path: str | Path, *, num_steps: int, guidance_scale: float = 1.0, lora_rank: int = 0,
                 lora_alpha: float = 0.0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        import diffusers

        self.path, self.device, self.dtype = Path(path), torch.device(device), dtype
        index_file = self.path / "model_index.json"
        if not index_file.exists():
            raise FileNotFoundError(f"model_path = {str(path)!r} is not a diffusers pipeline (no model_index.json); "
                                    "give a directory written by DiffusionPipeline.save_pretrained")
        index = json.loads(index_file.read_text())
        unet_class = getattr(diffusers, index["unet"][1])
        self.unet = unet_class.from_pretrained(self.path, subfolder="unet", torch_dtype=dtype).to(self.device)
        self.unet.requires_grad_(False)
        # DDIM whatever the pipeline shipped (its betas and offsets carry over); the last step must stay
        # stochastic, so set_alpha_to_one is off as in Stable Diffusion
        self.scheduler = diffusers.DDIMScheduler.from_pretrained(self.path, subfolder="scheduler",
                                                                 set_alpha_to_one=False)
        self.scheduler.set_timesteps(num_steps)
        self.num_steps = num_steps
        self.vae = self.text_encoder = self.tokenizer = None
        self.labels: dict[str, int] = {}
        self.null: torch.Tensor | None = None  # the unconditional input for guidance, one row
        if index.get("text_encoder", [None])[0]:
            self.kind = "text"
            self._load_text_parts()
        elif getattr(self.unet.config, "num_class_embeds", None):
            self.kind = "class"
            self._load_labels()
        else:
            self.kind = "unconditional"
        if guidance_scale > 1 and self.null is None:
            raise ValueError(f"diffusion.guidance_scale = {guidance_scale} needs an unconditional input, and this "
                             f"{self.kind} pipeline has none (class pipelines need class_labels.json 'null_class'); "
                             "set diffusion.guidance_scale=1.0")
        self.guidance_scale = guidance_scale
        self.lora_rank = lora_rank
        if lora_rank:
            self._inject_lora(lora_rank, lora_alpha or lora_rank)
        else:
            self.unet.requires_grad_(True)

    # -- loading ----------------------------------------------------------------------------------
    def _load_text_parts(self) -> None:
        from diffusers import AutoencoderKL
        from transformers import AutoTokenizer, CLIPTextModel

        self.tokenizer = AutoTokenizer.from_pretrained(self.path, subfolder="tokenizer")
        self.text_encoder = CLIPTextModel.from_pretrained(self.path, subfolder="text_encoder",
                                                          torch_dtype=self.dtype).to(self.device).eval()
        self.text_encoder.requires_grad_(False)
        self.vae = AutoencoderKL.from_pretrained(self.path, subfolder="vae", torch_dtype=self.dtype).to(self.device)
        self.vae.requires_grad_(False).eval()
        self.null = self._encode_text([""])

    def _load_labels(self) -> None:
        labels_file = self.path / "class_labels.json"
        if not labels_file.exists():
            raise FileNotFoundError(f"{self.path}: a class-conditional UNet needs class_labels.json "
                                    '({"labels": [...], "null_class": K or null}) to map prompts to classes')
        spec = json.loads(labels_file.read_text())
        self.labels = {name: i for i, name in enumerate(spec["labels"])}
        if spec.get("null_class") is not None:
            self.null = torch.tensor([int(spec["null_class"])], device=self.device)

    def _inject_lora(self, rank: int, alpha: float) -> None:
        from safetensors.torch import load_file

        inject_lora(self.unet, rank=rank, alpha=alpha, targets=LORA_TARGETS, init="gaussian",
                    key="diffusion.lora_rank")
        trained = self.path / "lora" / ADAPTER_FILE
        if trained.exists():
            self.load_trainable(load_file(trained, device=str(self.device)))

    # -- the policy -------------------------------------------------------------------------------
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return self.unet.config.in_channels, h, w

    def _encode_text(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(self.device)
        with torch.no_grad():
            return self.text_encoder(ids)[0]

    def condition(self, prompts: list[str]) -> torch.Tensor | None:
        """The denoiser's conditioning input for each prompt (class ids, text embeddings, or None)."""
        if self.kind == "text":
            return self._encode_text(list(prompts))
        if self.kind == "class":
            unknown = sorted({p for p in prompts if p not in self.labels})
            if unknown:
                raise ValueError(f"prompts {unknown} are not classes of {self.path} ({sorted(self.labels)}); "
                                 "fix task.path or leave it empty to use the pipeline's classes")
            return torch.tensor([self.labels[p] for p in prompts], device=self.device)
        return None

    def _denoise(self, denoiser, latents: torch.Tensor, timesteps: torch.Tensor, cond) -> torch.Tensor:
        if self.kind == "text":
            return denoiser(latents, timesteps, encoder_hidden_states=cond).sample
        if self.kind == "class":
            return denoiser(latents, timesteps, class_labels=cond).sample
        return denoiser(latents, timesteps).sample

    def predict_noise(self, latents: torch.Tensor, timesteps: torch.Tensor, cond, denoiser=None) -> torch.Tensor:
        """eps(x_t, t, c), with classifier-free guidance eps_u + g (eps_c - eps_u) when g > 1 (Ho & Salimans
        2022). ``denoiser``: the module to call (a DeepSpeed engine while training; else the UNet)."""
        denoiser = denoiser or self.unet
        if self.guidance_scale <= 1:
            return self._denoise(denoiser, latents, timesteps, cond)
        # in the conditioning's dtype: a bf16 learner casts text embeddings to bf16, and torch.cat would
        # otherwise widen the pair back to the float32 of the null embedding
        null = self.null.to(cond.dtype).expand(latents.shape[0], *self.null.shape[1:])
        both = self._denoise(denoiser, torch.cat([latents, latents]), torch.cat([timesteps, timesteps]),
                             torch.cat([null, cond]))
        uncond, conditioned = both.chunk(2)
        return uncond + self.guidance_scale * (conditioned - uncond)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """x_0 -> uint8 images [N, H, W, 3] (through the VAE for latent pipelines)."""
        with torch.no_grad():
            if self.vae is not None:
                latents = self.vae.decode(latents / self.vae.config.scaling_factor).sample
            images = ((latents.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        return images.permute(0, 2, 3, 1).cpu()

    # -- weights ----------------------------------------------------------------------------------
    def trainable_names(self, module: torch.nn.Module | None = None) -> set[str]:
        return {n for n, p in (module or self.unet).named_parameters() if p.requires_grad}

    def load_trainable(self, state: dict[str, torch.Tensor]) -> None:
        """Load the trained weights (all of the denoiser, or the adapters) in place."""
        own = self.unet.state_dict()
        unknown = sorted(set(state) - set(own))
        missing = sorted(self.trainable_names() - set(state))
        if unknown or missing:
            raise ValueError(f"weights do not fit this denoiser (diffusion.lora_rank must match the learner's): "
                             f"{len(unknown)} unknown keys {unknown[:3]}, {len(missing)} missing {missing[:3]}")
        with torch.no_grad():
            for name, tensor in state.items():
                own[name].copy_(tensor)

    def save_pipeline(self, dst: str | Path, trainable: dict[str, torch.Tensor]) -> Path:
        """A loadable pipeline directory: this pipeline's frozen parts (hard-linked when possible) with the
        trained denoiser weights, or the base denoiser plus ``lora/adapter.safetensors``."""
        from safetensors.torch import save_file

        dst = Path(dst)
        dst.mkdir(parents=True, exist_ok=True)
        for item in self.path.iterdir():
            if item.name in ("unet", "lora"):
                continue
            if item.is_dir():
                shutil.copytree(item, dst / item.name, copy_function=_link_or_copy, dirs_exist_ok=True)
            else:
                _link_or_copy(item, dst / item.name)
        (dst / "unet").mkdir(exist_ok=True)
        shutil.copy2(self.path / "unet" / "config.json", dst / "unet" / "config.json")
        state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in trainable.items()}
        if self.lora_rank:
            for f in (self.path / "unet").iterdir():
                if f.name != "config.json":
                    _link_or_copy(f, dst / "unet" / f.name)
            (dst / "lora").mkdir(exist_ok=True)
            save_file(state, dst / "lora" / ADAPTER_FILE)
        else:
            save_file(state, dst / "unet" / UNET_WEIGHTS)
        return dst


def _link_or_copy(src, dst) -> None:
    """Frozen parts are shared between checkpoints by hard links (copies across file systems)."""
    try:
        if os.path.exists(dst):
            os.remove(dst)
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
