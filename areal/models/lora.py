"""LoRA adapters injected in place with peft, shared by the LM learner and the diffusion policy.

The module keeps its own class and forward; each adapted layer gains ``lora_A``/``lora_B`` beside its
frozen ``base_layer``, and only ``lora_`` parameters train. peft is imported only when a rank is set.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

ADAPTER_DIR = "adapter"  # a subfolder: transformers would treat adapter_config.json at the top as "load the base"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def inject_lora(module: torch.nn.Module, *, rank: int, alpha: float, targets: list[str], dropout: float = 0.0,
                init: bool | str = True, key: str = "lora.rank") -> None:
    """Add rank-``rank`` adapters (scale ``alpha / rank``; alpha 0 = rank) to the ``targets`` layers of
    ``module`` and freeze everything else. ``key`` is the config key that errors name."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha or rank, lora_dropout=dropout, target_modules=list(targets),
                        init_lora_weights=init)
    try:
        inject_adapter_in_model(config, module)
    except ValueError as exc:  # peft: no target module found
        raise ValueError(f"config error: {key} = {rank} with target modules {list(targets)}: {exc}; name layers "
                         f"this {type(module).__name__} has, or use full fine-tuning (rank 0)") from None
    for name, param in module.named_parameters():
        param.requires_grad_("lora_" in name)
    if not any(p.requires_grad for p in module.parameters()):
        raise ValueError(f"config error: {key} = {rank}: {type(module).__name__} has no {list(targets)} layers "
                         "to adapt; use full fine-tuning (rank 0)")


def adapter_base(model_path: str | Path) -> Path | None:
    """The base model a saved LoRA model (``<model_path>/adapter``) was trained from; None without an adapter."""
    config = Path(model_path) / ADAPTER_DIR / ADAPTER_CONFIG
    if not config.is_file():
        return None
    base = Path(json.loads(config.read_text())["base_model_name_or_path"])
    if not (base / "config.json").is_file():
        raise FileNotFoundError(f"{config}: the base model {str(base)!r} the adapter was trained on is gone; "
                                "resuming a LoRA checkpoint needs it (the merged model beside it is not exact)")
    return base
