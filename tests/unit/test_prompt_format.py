"""Prompts reach an instruct model as a chat turn, and a model without a chat template as raw text."""

import pytest

from rollouts.prompt_format import PromptFormat

TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}|{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


@pytest.fixture()
def tokenizer():
    from launch.tiny_model import build_char_tokenizer

    return build_char_tokenizer()


def test_a_tokenizer_without_a_chat_template_gets_the_raw_text(tokenizer):
    assert PromptFormat("auto").encode(tokenizer, "12+34=") == list(tokenizer.encode("12+34="))


def test_auto_renders_a_user_turn_and_opens_the_assistant_turn(tokenizer):
    tokenizer.chat_template = TEMPLATE
    ids = PromptFormat("auto").encode(tokenizer, "1+2=")
    assert ids == list(tokenizer.encode("<user>1+2=|<assistant>", add_special_tokens=False))


def test_a_system_prompt_comes_first_and_none_turns_the_template_off(tokenizer):
    tokenizer.chat_template = TEMPLATE
    ids = PromptFormat("auto", system_prompt="Be brief.").encode(tokenizer, "1+2=")
    assert ids == list(tokenizer.encode("<system>Be brief.|<user>1+2=|<assistant>", add_special_tokens=False))
    assert PromptFormat("none").encode(tokenizer, "1+2=") == list(tokenizer.encode("1+2="))


def test_a_system_prompt_without_a_chat_is_refused_by_name(tokenizer):
    with pytest.raises(ValueError, match="task.system_prompt"):
        PromptFormat("none", system_prompt="Be brief.").encode(tokenizer, "1+2=")
    with pytest.raises(ValueError, match="task.chat_template"):
        PromptFormat("always")
