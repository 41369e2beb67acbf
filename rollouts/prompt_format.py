"""How a task's prompt text becomes the token ids the policy sees: raw, or in the model's chat format.

Instruct models are trained on conversations; a bare question reaches them as a document to continue, not a
turn to answer. With ``task.chat_template=auto`` a tokenizer that carries a chat template renders the prompt
as a user turn (after an optional system turn) followed by the opening of the assistant's turn; tokenizers
without one (the demo's character model) get the text as is. The ids are rendered once, here: the engine and
the learner only ever see token ids.

A dataset's prompt may already be a conversation (a tuple of ``{role, content}`` messages, system turns
included): it is rendered as it is, after ``system_prompt`` when it has no system turn of its own. A
conversation that ends with an assistant message is continued, as TRL does (``continue_final_message``): the
model writes the rest of that message, after a prefill such as "<think>". A conversation needs a chat template:
without one the error names ``task.chat_template``.
"""

from __future__ import annotations

from dataclasses import dataclass

CHAT_TEMPLATE_MODES = ("auto", "none")
_TURN_END = "AREAL-POLICY-TURN-ENDS-HERE"  # marks where the policy's own tokens stop in a rendered conversation


def prefill(prompt) -> str:
    """What the prompt already wrote of the model's answer: the content of a conversation's final assistant
    message (e.g. "<think>"), else ""."""
    if isinstance(prompt, str) or not prompt or prompt[-1].get("role") != "assistant":
        return ""
    return prompt[-1].get("content") or ""


def _turn(messages: list[dict]) -> dict:
    """Open the assistant's turn, or continue the assistant message the conversation ends with."""
    if messages[-1]["role"] == "assistant":
        return {"continue_final_message": True, "add_generation_prompt": False}
    return {"add_generation_prompt": True}


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

    def encode(self, tokenizer, prompt) -> list[int]:
        """Token ids of ``prompt``, a text or a conversation (special tokens as the model expects them)."""
        if not self.uses_chat(tokenizer):
            self.check_plain(prompt)
            return list(tokenizer.encode(prompt))
        messages = self.messages(prompt)
        rendered = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **_turn(messages))
        return list(rendered["input_ids"])

    def render(self, tokenizer, prompt) -> str:
        """The text ``encode`` tokenizes: the prompt, or its conversation rendered by the chat template."""
        if not self.uses_chat(tokenizer):
            self.check_plain(prompt)
            return prompt
        messages = self.messages(prompt)
        return tokenizer.apply_chat_template(messages, tokenize=False, **_turn(messages))

    def messages(self, prompt) -> list[dict]:
        """The conversation a prompt is rendered as: a text becomes a user turn; ``system_prompt`` goes first
        unless the conversation has its own system turn."""
        turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
        if self.system_prompt and turns[0]["role"] != "system":
            turns.insert(0, {"role": "system", "content": self.system_prompt})
        return turns

    def check_plain(self, prompt) -> None:
        """A prompt fed as raw text must be a text, with no system prompt to place."""
        if not isinstance(prompt, str):
            raise ValueError("the prompt is a chat conversation but the model's tokenizer has no chat template, or "
                             "task.chat_template=none: use a chat model (or task.chat_template=auto), or string "
                             "prompts (task.prompt_template)")
        if self.system_prompt:
            raise ValueError("task.system_prompt is set but the prompt is not rendered as a chat (no chat "
                             "template in the tokenizer, or task.chat_template=none): clear it")

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
