"""Qwen2-architecture models of real sizes, built from their config with random weights (no downloads).

Learner memory and speed depend on the shape, not on the weights, so benchmarks and
memory tests use these. The Qwen2.5 shapes are the published configs' dimensions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a Qwen2 decoder."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int = 151_936
    tie_word_embeddings: bool = True

    def parameters(self) -> int:
        """Parameter count (embeddings once when tied)."""
        h, i, layers = self.hidden_size, self.intermediate_size, self.num_hidden_layers
        head_dim = h // self.num_attention_heads
        kv = self.num_key_value_heads * head_dim
        attention = h * h + 2 * h * kv + h * h + h + 2 * kv  # q, k, v (with biases), o
        per_layer = attention + 3 * h * i + 2 * h
        embeddings = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return layers * per_layer + embeddings + h

    def train_flops_per_token(self, context: int) -> float:
        """Forward + backward FLOPs per token: 6 x matmul parameters + attention (6 x 2 x layers x context x
        hidden, causal: half of it), the usual MFU accounting."""
        matmul = self.parameters() - self.vocab_size * self.hidden_size * (0 if self.tie_word_embeddings else 1)
        attention = 6 * self.num_hidden_layers * context * self.hidden_size
        return 6.0 * matmul + attention


SHAPES = {
    # the CPU memory check: a toy decoder under a real vocabulary, where the logits are everything
    "tiny-151k": ModelShape(64, 128, 2, 4, 2),
    "qwen2.5-0.5b": ModelShape(896, 4864, 24, 14, 2),
    "qwen2.5-1.5b": ModelShape(1536, 8960, 28, 12, 2),
    "qwen2.5-7b": ModelShape(3584, 18944, 28, 28, 4, tie_word_embeddings=False),
}


def save_random_model(path: str | Path, shape: ModelShape, dtype: str = "float32", seed: int = 0) -> Path:
    """A randomly initialised ``Qwen2ForCausalLM`` of ``shape`` saved at ``path`` (safetensors + config)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=32_768,
        rope_theta=1_000_000.0,
        tie_word_embeddings=shape.tie_word_embeddings,
        torch_dtype=dtype,
    )
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    model = model.to_empty(device="cpu").to(getattr(torch, dtype))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.normal_(0.0, config.initializer_range)
    model.tie_weights()
    path = Path(path)
    model.save_pretrained(path, safe_serialization=True)
    return path
