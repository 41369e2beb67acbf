"""How a task's prompt text becomes the token ids the policy sees: raw, or in the model's chat format.

Instruct models are trained on conversations; a bare question reaches them as a document to continue, not a
turn to answer. With ``task.chat_template=auto`` a tokenizer that carries a chat template renders the prompt
as a user turn (after an optional system turn) followed by the opening of the assistant's turn; tokenizers
without one (the demo's character model) get the text as is. The ids are rendered once, here: the engine and
the learner only ever see token ids.
"""

from __future__ import annotations

from dataclasses import dataclass

CHAT_TEMPLATE_MODES = ("auto", "none")
_TURN_END = "AREAL-POLICY-TURN-ENDS-HERE"  # marks where the policy's own tokens stop in a rendered conversation


@dataclass(frozen=True)
class PromptFormat:
    """``chat_template``: "auto" (the tokenizer's chat template when it has one) or "none" (raw text)."""

    chat_template: str = "auto"
    system_prompt: str = ""

    def __post_init__(self):
        if self.chat_template not in CHAT_TEMPLATE_MODES:
            raise ValueError(f"task.chat_template = {self.chat_template!r}; expected one of {CHAT_TEMPLATE_MODES}")

    def uses_chat(self, tokenizer) -> bool:
        return self.chat_template == "auto" and bool(getattr(tokenizer, "chat_template", None))

    def encode(self, tokenizer, text: str) -> list[int]:
        """Token ids of the prompt ``text`` (special tokens as the model expects them)."""
        if not self.uses_chat(tokenizer):
            if self.system_prompt:
                raise ValueError("task.system_prompt is set but the prompt is not rendered as a chat (no chat "
                                 "template in the tokenizer, or task.chat_template=none): clear it")
            return list(tokenizer.encode(text))
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": text})
        rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                 return_dict=True)
        return list(rendered["input_ids"])

    def encode_observation(self, tokenizer, text: str) -> list[int]:
        """Token ids of an environment's answer appended after a policy turn of a multi-turn episode: as is for
        raw text; in a chat format, the end of the assistant's turn, a tool turn holding ``text`` and the
        opening of the next assistant turn, as the model's own chat template writes them."""
        if not self.uses_chat(tokenizer):
            return list(tokenizer.encode(text, add_special_tokens=False))
        conversation = [{"role": "user", "content": "?"}, {"role": "assistant", "content": _TURN_END},
                        {"role": "tool", "content": text}]
        rendered = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        if _TURN_END not in rendered:
            raise ValueError("the tokenizer's chat template drops assistant turns, so observations cannot follow "
                             "one: use task.chat_template=none")
        return list(tokenizer.encode(rendered[rendered.index(_TURN_END) + len(_TURN_END):], add_special_tokens=False))
