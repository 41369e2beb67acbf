"""LoRA for the LM learner: adapters in the causal LM, merged weights out, the adapter saved PEFT's way.

The learner trains ``lora_A``/``lora_B`` beside each frozen ``base_layer``. What leaves the learner for
inference (bucket and file exports, the saved model) is by default the *merged* model under the base
model's own names, ``W' = W + (alpha / rank) B A``, so vLLM reloads it in place exactly as it does for
full fine-tuning and the engine runs the weights of the version it tags. With ``learner.lora.sync=adapter``
an export carries the adapters alone, under PEFT's saved names, for vLLM's LoRA requests. The adapter itself
is saved beside the merged model (``adapter/``, PEFT's file layout); resuming builds the base from
``base_model_name_or_path`` and loads the adapter from there, since re-deriving W from W' is not exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from areal.config import LoraConfig
from areal.models.lora import ADAPTER_CONFIG, ADAPTER_DIR, ADAPTER_WEIGHTS, adapter_base, inject_lora

PEFT_PREFIX = "base_model.model."  # PEFT's saved keys are the PeftModel's, which wraps the LM twice
ADAPTER = "default"  # peft's adapter name inside the live module
BASE = ".base_layer"


class LoraWeights:
    """The adapters of one causal LM and the maps between its peft names and the base model's names."""

    def __init__(self, module: torch.nn.Module, cfg: LoraConfig, base_path: str | Path, seed: int):
        self.cfg, self.base_path = cfg, Path(base_path).resolve()
        # the same initial adapters on every data-parallel rank, whatever each rank's own seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            inject_lora(module, rank=cfg.rank, alpha=cfg.alpha, targets=cfg.target_modules, dropout=cfg.dropout,
                        key="learner.lora.rank")
        self.adapted = adapted_layers(module)  # peft layer path, e.g. model.layers.0.self_attn.q_proj

    # -- names ------------------------------------------------------------------------------------
    @staticmethod
    def base_name(name: str) -> str:
        """The base model's name of a frozen tensor: ``q_proj.base_layer.weight`` -> ``q_proj.weight``."""
        return name.replace(BASE + ".", ".")

    def export_names(self, names: list[str]) -> list[str]:
        """The base model's names of ``names`` (peft state-dict names, in order), adapters left out."""
        return [self.base_name(n) for n in names if ".lora_" not in n]

    def sources(self, names: list[str]) -> list[str]:
        """The peft tensors the merged tensors ``names`` are computed from, in order."""
        out = []
        for name in names:
            layer, _, leaf = name.rpartition(".")
            if layer in self.adapted:
                out.append(f"{layer}{BASE}.{leaf}")
                if leaf == "weight":
                    out += [f"{layer}.lora_A.{ADAPTER}.weight", f"{layer}.lora_B.{ADAPTER}.weight"]
            else:
                out.append(name)
        return out

    def sizes(self, sizes: dict[str, int], names: list[str]) -> list[tuple[str, int]]:
        """(base name, bytes) of the merged tensors ``names``: each as large as its frozen base tensor."""
        return [(n, sizes[self.sources([n])[0]]) for n in names]

    # -- merging ----------------------------------------------------------------------------------
    def merge(self, state: dict[str, torch.Tensor], names: list[str] | None = None) -> dict[str, torch.Tensor]:
        """The merged tensors ``names`` (default: all) under base names, from peft-named ``state``. Each adapted
        weight is W + scale * B @ A computed in float32, then stored in W's dtype."""
        if names is None:
            names = [self.base_name(n) for n in state if ".lora_" not in n]
        out = {}
        for name in names:
            layer, _, leaf = name.rpartition(".")
            if layer not in self.adapted:
                out[name] = state[name]
                continue
            base = state[f"{layer}{BASE}.{leaf}"]
            if leaf != "weight":
                out[name] = base
                continue
            a, b = state[f"{layer}.lora_A.{ADAPTER}.weight"], state[f"{layer}.lora_B.{ADAPTER}.weight"]
            delta = (b.float() @ a.float()) * self.cfg.scale  # [out, r] @ [r, in]
            out[name] = (base.float() + delta).to(base.dtype)
        return out

    # -- the adapter alone (learner.lora.sync=adapter) ------------------------------------------------
    @staticmethod
    def adapter_key(name: str) -> str:
        """PEFT's saved name of a live adapter tensor: ``x.lora_A.default.weight`` -> ``base_model.model.x.lora_A.weight``."""
        return PEFT_PREFIX + name.replace(f".{ADAPTER}.", ".")

    @staticmethod
    def live_name(key: str) -> str:
        """The live adapter tensor a saved PEFT name comes from (``adapter_key`` inverted)."""
        layer, _, rest = key.removeprefix(PEFT_PREFIX).rpartition(".lora_")
        kind, _, leaf = rest.partition(".")
        return f"{layer}.lora_{kind}.{ADAPTER}.{leaf}"

    def adapter_sizes(self, sizes: dict[str, int]) -> list[tuple[str, int]]:
        """(saved name, bytes) of every adapter tensor, in state-dict order: what an adapter export carries."""
        return [(self.adapter_key(n), nbytes) for n, nbytes in sizes.items() if ".lora_" in n]

    def adapter_config(self) -> dict:
        """PEFT's ``adapter_config.json`` of these adapters, as plain JSON values."""
        from peft import LoraConfig as PeftLoraConfig

        config = PeftLoraConfig(r=self.cfg.rank, lora_alpha=self.cfg.alpha or self.cfg.rank,
                                lora_dropout=self.cfg.dropout, target_modules=list(self.cfg.target_modules),
                                task_type="CAUSAL_LM", base_model_name_or_path=str(self.base_path)).to_dict()
        return json.loads(json.dumps(config, default=lambda v: sorted(v) if isinstance(v, (set, frozenset)) else str(v)))

    # -- the adapter on disk ----------------------------------------------------------------------
    def save_adapter(self, path: Path, state: dict[str, torch.Tensor]) -> None:
        """PEFT's adapter layout at ``path`` (``adapter_model.safetensors`` + ``adapter_config.json``), loadable by
        ``peft.PeftModel.from_pretrained(base, path)`` and vLLM's LoRA requests."""
        from safetensors.torch import save_file

        path.mkdir(parents=True, exist_ok=True)
        tensors = {self.adapter_key(n): t.detach().to("cpu").contiguous() for n, t in state.items() if ".lora_" in n}
        save_file(tensors, str(path / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (path / ADAPTER_CONFIG).write_text(json.dumps(self.adapter_config(), indent=2, sort_keys=True))

    def load_adapter(self, module: torch.nn.Module, path: Path) -> None:
        """Load adapter weights saved by ``save_adapter`` into ``module`` in place; every adapter must be there."""
        from safetensors.torch import load_file

        saved = json.loads((path / ADAPTER_CONFIG).read_text())
        ours = {"r": self.cfg.rank, "lora_alpha": self.cfg.alpha or self.cfg.rank}
        differ = {k: (saved.get(k), v) for k, v in ours.items() if saved.get(k) != v}
        if differ or set(saved.get("target_modules") or ()) != set(self.cfg.target_modules):
            raise ValueError(f"{path}: adapter saved with r={saved.get('r')}, lora_alpha={saved.get('lora_alpha')}, "
                             f"target_modules={saved.get('target_modules')}; learner.lora has rank={self.cfg.rank}, "
                             f"alpha={self.cfg.alpha}, target_modules={list(self.cfg.target_modules)}: resume with "
                             "the settings the checkpoint was trained with")
        tensors = {self.live_name(key): tensor for key, tensor in load_file(str(path / ADAPTER_WEIGHTS)).items()}
        own = {n: p for n, p in module.named_parameters() if ".lora_" in n}
        if set(tensors) != set(own):
            missing, unknown = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
            raise ValueError(f"{path}: adapter does not fit the model: {len(missing)} missing {missing[:3]}, "
                             f"{len(unknown)} unknown {unknown[:3]}")
        with torch.no_grad():
            for name, param in own.items():
                param.copy_(tensors[name])


def adapted_layers(module: torch.nn.Module) -> set[str]:
    """Paths of the layers peft adapted; only plain Linear layers merge as W + scale * B @ A here."""
    from peft.tuners.lora import Linear

    layers = set()
    for name, child in module.named_modules():
        if not hasattr(child, "lora_A"):
            continue
        if not isinstance(child, Linear) or child.fan_in_fan_out or child.use_dora.get(ADAPTER):
            raise ValueError(f"config error: learner.lora.target_modules selects {name} "
                             f"({type(child.get_base_layer()).__name__}); only Linear layers (no DoRA, no "
                             "transposed Conv1D) are supported; name the model's Linear projections")
        layers.add(name)
    return layers
