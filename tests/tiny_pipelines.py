"""Tiny randomly initialised diffusers pipelines, built locally (no hub) in the layouts real ones use.

Not fakes: real diffusers/transformers classes with small configs, so the sampler and
the learner run their real code paths (class-conditional pixel UNet, and the Stable
Diffusion layout with a text encoder, tokenizer and VAE).
"""

from __future__ import annotations

import json
from pathlib import Path


def ddim_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True, set_alpha_to_one=False,
                         steps_offset=1)


def class_conditional_pipeline(path: Path, labels=("red", "blue"), size: int = 16, seed: int = 0,
                               unconditional: bool = False) -> Path:
    """A pixel-space UNet with class embeddings (last index: the null class for guidance), or without any
    conditioning (``unconditional``: no class embeddings, no class_labels.json)."""
    import torch
    from diffusers import DDPMPipeline, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=size, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(16, 32), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
                       num_class_embeds=None if unconditional else len(labels) + 1)
    DDPMPipeline(unet=unet, scheduler=ddim_scheduler()).save_pretrained(path)
    if unconditional:
        return path
    (path / "class_labels.json").write_text(json.dumps({"labels": list(labels), "null_class": len(labels)}))
    return path


def text_conditional_pipeline(path: Path, words=("a", "red", "blue", "circle", "square"), seed: int = 0) -> Path:
    """Stable Diffusion's layout (unet, vae, text_encoder, tokenizer, scheduler) at toy size."""
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, pad_token="[PAD]", unk_token="[UNK]",
                                        model_max_length=8)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                                num_hidden_layers=1, num_attention_heads=2,
                                                max_position_embeddings=8, pad_token_id=0, bos_token_id=0,
                                                eos_token_id=1))
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=16,
                                attention_head_dim=4,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=8, sample_size=16)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=ddim_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(path)
    return path
