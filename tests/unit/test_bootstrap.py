"""Warm-start bootstrap: a tiny, short run saves a loadable HF model and is cached by its settings."""

import json
import logging

import pytest
import torch

import launch.bootstrap as bootstrap
from launch.tiny_model import TinyModelSize, build_char_tokenizer, build_tiny_model
from rollouts.tasks import ArithmeticTask

TINY = TinyModelSize(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                     num_key_value_heads=1, max_position_embeddings=32)
FAST = dict(size=TINY, max_steps=4, batch_size=8, eval_every=2, eval_size=16, warmup_steps=2)


@pytest.fixture(scope="module")
def cached_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("boot") / "model"
    return bootstrap.bootstrap_model(out, seed=0, **FAST)


def test_bootstrap_saves_a_loadable_hf_model(cached_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for name in ("model.safetensors", "config.json", "tokenizer.json", bootstrap.SETTINGS_FILE):
        assert (cached_model / name).is_file(), name
    model = AutoModelForCausalLM.from_pretrained(cached_model)
    tokenizer = AutoTokenizer.from_pretrained(cached_model)
    assert model.config.hidden_size == TINY.hidden_size
    assert tokenizer.decode(tokenizer.encode("37+85=")) == "37+85="
    record = json.loads((cached_model / bootstrap.SETTINGS_FILE).read_text())
    assert record["steps"] == 4 and 0.0 <= record["eval_accuracy"] <= 1.0
    assert record["settings"]["seed"] == 0 and record["settings"]["size"]["hidden_size"] == TINY.hidden_size


def test_second_call_reuses_the_cache_without_training(cached_model, monkeypatch, caplog):
    weights = cached_model / "model.safetensors"
    before = (weights.stat().st_mtime_ns, weights.read_bytes())

    def no_training(*args, **kwargs):
        raise AssertionError("bootstrap_model rebuilt the model although the cache matched")

    monkeypatch.setattr(bootstrap, "build_tiny_model", no_training)
    with caplog.at_level(logging.INFO, logger="launch.bootstrap"):
        assert bootstrap.bootstrap_model(cached_model, seed=0, **FAST) == cached_model
    assert "reusing" in caplog.text
    assert (weights.stat().st_mtime_ns, weights.read_bytes()) == before


def test_changed_settings_retrain(cached_model, monkeypatch):
    calls = []
    real = bootstrap.build_tiny_model
    monkeypatch.setattr(bootstrap, "build_tiny_model", lambda *a, **k: calls.append(1) or real(*a, **k))
    bootstrap.bootstrap_model(cached_model, seed=0, **{**FAST, "max_steps": 2})
    assert calls == [1]
    assert json.loads((cached_model / bootstrap.SETTINGS_FILE).read_text())["steps"] == 2


def test_bootstrap_is_deterministic_and_logs_progress(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="launch.bootstrap"):
        a = bootstrap.bootstrap_model(tmp_path / "a", seed=1, **{**FAST, "max_steps": 2})
    b = bootstrap.bootstrap_model(tmp_path / "b", seed=1, **{**FAST, "max_steps": 2})
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert "step 2 loss" in caplog.text and "held-out accuracy" in caplog.text


def test_stops_at_target_accuracy_and_restores_threads(tmp_path):
    threads = torch.get_num_threads()
    # a target of 0 is met at the first evaluation
    out = bootstrap.bootstrap_model(tmp_path / "m", seed=0, **{**FAST, "target_accuracy": 0.0})
    assert json.loads((out / bootstrap.SETTINGS_FILE).read_text())["steps"] == FAST["eval_every"]
    assert torch.get_num_threads() == threads  # trained on one thread for reproducibility, then restored


def test_sft_batch_supervises_only_answer_and_eos():
    tokenizer = build_char_tokenizer()
    task = ArithmeticTask(eval_size=10)
    ids, mask, labels = bootstrap.sft_batch(tokenizer, [task.train[0]])
    sample = task.train[0]
    n_prompt, n_answer = len(sample.prompt), len(sample.reference)
    assert ids.shape[1] == n_prompt + n_answer + 1 and mask.all()
    assert (labels[0, :n_prompt] == -100).all()
    assert tokenizer.decode(labels[0, n_prompt:-1].tolist()) == sample.reference
    assert labels[0, -1] == tokenizer.eos_token_id


def test_greedy_helpers_cut_at_eos_and_handle_left_padding():
    tokenizer = build_char_tokenizer()
    assert bootstrap.decode_until_eos(tokenizer, tokenizer.encode("12") + [tokenizer.eos_token_id, 5, 6]) == "12"
    model = build_tiny_model(tokenizer, TINY, seed=0)
    prompts = ["3+5=", "37+85=", "9+81="]
    batched = bootstrap.greedy_completions(model, tokenizer, prompts, max_new_tokens=4)
    single = [bootstrap.greedy_completions(model, tokenizer, [p], max_new_tokens=4)[0] for p in prompts]
    assert batched == single
    ids, mask = bootstrap.encode_batch(tokenizer, prompts, pad_left=True)
    assert torch.equal(bootstrap.position_ids(mask)[0, -4:], torch.arange(4))


def test_length_buckets_give_the_one_batch_gradient():
    """A long-tailed batch run as length-sorted pieces: same mean token loss and gradient as one padded batch."""
    from rollouts.tasks.skip_count import SkipCountTask

    tokenizer = build_char_tokenizer()
    size = TinyModelSize(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=512)
    samples = [SkipCountTask.problem(40, 7), SkipCountTask.problem(180, 2), SkipCountTask.problem(5, 17),
               SkipCountTask.problem(60, 3), SkipCountTask.problem(500, 19)]
    grads, losses = [], []
    for buckets in (1, 2, 3):
        model = build_tiny_model(tokenizer, size, seed=0)
        losses.append(float(bootstrap.sft_backward(model, tokenizer, samples, buckets, "\n", "answer")))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert losses[1] == pytest.approx(losses[0], rel=1e-5) and losses[2] == pytest.approx(losses[0], rel=1e-5)
    assert torch.allclose(grads[1], grads[0], rtol=1e-4, atol=1e-6)
    assert torch.allclose(grads[2], grads[0], rtol=1e-4, atol=1e-6)
    # the pieces hold unequal token counts, so a plain mean of their losses would not be the batch's
    model = build_tiny_model(tokenizer, size, seed=0)
    ordered = sorted(samples, key=lambda s: len(s.prompt) + len(s.reference))
    pieces = [bootstrap.sft_batch(tokenizer, ordered[i:i + 3], "\n") for i in (0, 3)]
    plain = sum(float(model(input_ids=i, attention_mask=m, labels=labels).loss) for i, m, labels in pieces) / 2
    assert abs(plain - losses[0]) > 1e-3


def test_prompts_the_saved_tokenizer_reads_otherwise_are_refused_before_training(tmp_path):
    """The saved tiny tokenizer loads as Qwen2's, which drops whitespace: such prompts would train one way and serve
    another."""
    from rollouts.tasks.base import Task, TaskSample

    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, TINY, seed=0)
    fine = Task(train=[TaskSample("a", "40_down_by_7:", "40")], eval=[TaskSample("b", "37+85=", "122")])
    bootstrap.check_runtime_tokenizer(model, tokenizer, fine, tmp_path / "fine")
    spaced = Task(train=[TaskSample("a", "40 down by 7:", "40")], eval=[TaskSample("b", "37+85=", "122")])
    with pytest.raises(ValueError, match="40 down by 7"):
        bootstrap.check_runtime_tokenizer(model, tokenizer, spaced, tmp_path / "spaced")
    assert not (tmp_path / "spaced" / bootstrap.SETTINGS_FILE).exists()
