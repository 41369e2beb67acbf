"""The reference policy of ``algo.kl_coef``: the run's starting model, scored on the same micro-batches and
through the same chunked head as the policy (ALGORITHMS.md §6).

With LoRA it costs no memory: the reference is the learner's own base model, its adapters switched off for the
pass. With full fine-tuning it is a frozen copy of the starting model, loaded from the path the run started from
(a resumed run's weights come from a checkpoint, its reference never does), beside the policy or on the CPU
(``learner.ref_offload``).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from areal.algos import chunked_token_logprobs
from areal.packing import MicroBatch


@contextmanager
def adapters_disabled(module: torch.nn.Module):
    """Run ``module`` as its base model: every peft LoRA layer's adapters off, then on again."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in module.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


class AdapterFreeReference:
    """The LoRA learner's base model: the policy's own forward with the adapters disabled."""

    def __init__(self, learner):
        self.learner = learner

    @torch.no_grad()
    def logprobs(self, mb: MicroBatch, width: int) -> torch.Tensor:
        with adapters_disabled(self.learner.engine.module):
            return self.learner.logprobs(mb, width)


class FrozenReference:
    """A frozen copy of the starting model (full fine-tuning), on ``device``."""

    def __init__(self, path: str, dtype: torch.dtype, device: torch.device, temperature: float, chunk_tokens: int,
                 full_logits: bool):
        from transformers import AutoModelForCausalLM

        from learners.lm_learner import causal_lm_parts

        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval().requires_grad_(False)
        self.device, self.temperature, self.chunk_tokens = device, temperature, chunk_tokens
        self.full_logits = full_logits  # the learner's full-logits path (packing=false, chunk 0): the same here
        if not full_logits:
            self.decoder, self.head = causal_lm_parts(self.model)

    @torch.no_grad()
    def logprobs(self, mb: MicroBatch, width: int) -> torch.Tensor:
        mb = mb.to(self.device)
        if self.full_logits:
            logits = self.model(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits
            picked = logits.reshape(-1, logits.shape[-1])[mb.predictors]
            lp = chunked_token_logprobs(picked, torch.nn.Identity(), mb.targets, self.temperature, 0)
        else:
            out = self.decoder(input_ids=mb.input_ids, attention_mask=mb.attention_mask,
                               position_ids=mb.position_ids, use_cache=False)
            hidden = out.last_hidden_state.reshape(-1, out.last_hidden_state.shape[-1])[mb.predictors]
            lp = chunked_token_logprobs(hidden, self.head, mb.targets, self.temperature, self.chunk_tokens)
        return mb.scatter(lp, width)

    def state_digest(self) -> str:
        from learners.deepspeed_learner import state_digest

        return state_digest(self.model.state_dict())
