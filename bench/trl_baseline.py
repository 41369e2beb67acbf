"""TRL's synchronous ``GRPOTrainer`` on a CPU demo's task: the baseline of ``bench/vs_trl.py``.

TRL is a benchmark dependency only (``pip install -e .[bench]``). The run mirrors the preset
(``arith_tiny`` or ``longtail_tiny``): the same bootstrapped model, train prompts and held-out set,
16 prompts x 8 samples per step, the learning rate, temperature and completion budget,
token-level loss normalisation (TRL's ``dapo``, areal's token level), group-normalised
advantages, no KL term, constant learning rate, gradient-norm clip 1.0, AdamW; generation
is Hugging Face ``generate`` in the trainer's process, as a TRL user on a CPU gets it, or with
``vllm=True`` vLLM in colocate mode (``use_vllm=True, vllm_mode="colocate"``), as a GPU user runs it.

Held-out accuracy is greedy decoding of the same problems, scored by the task's own rule.
The training clock stops while it is measured, so the clock is training time alone.
"""

from __future__ import annotations

import time

import torch


@torch.no_grad()
def held_out_accuracy(model, tokenizer, task, max_new_tokens: int) -> float:
    """Greedy accuracy over ``task.eval``, one left-padded batch, scored by ``task.score``."""
    samples = list(task.eval)
    was_training = model.training
    model.eval()
    enc = tokenizer([s.prompt for s in samples], return_tensors="pt", padding=True, padding_side="left",
                    add_special_tokens=False)
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    model.train(was_training)
    return sum(task.score(text, sample) for text, sample in zip(texts, samples)) / len(samples)


def run_trl(model_path: str, task, steps: int, eval_every: int, prompts_per_step: int, samples: int, lr: float,
            max_new_tokens: int, threads: int, seed: int, out_dir: str, vllm: bool = False,
            max_model_len: int = 0) -> dict:
    """Train ``steps`` GRPO steps with TRL; returns {"evals": [(step, train seconds, accuracy)], "step_seconds_median",
    "train_seconds", "steps", "generate_seconds" (training clock spent in generation), "completion_tokens"}."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    by_prompt = {s.prompt: s for s in task.train}
    data = Dataset.from_list([{"prompt": s.prompt} for s in task.train])

    completion_tokens = [0]

    def exact_answer(prompts, completions, completion_ids=(), **_) -> list[float]:
        completion_tokens[0] += sum(len(ids) for ids in completion_ids)
        return [task.score(c, by_prompt[p]) for p, c in zip(prompts, completions)]

    class HeldOutClock(TrainerCallback):
        """Evaluates every ``eval_every`` steps with the training clock stopped."""

        def __init__(self):
            self.started, self.paused, self.evals, self.step_times = 0.0, 0.0, [], []

        def train_seconds(self) -> float:
            return time.perf_counter() - self.started - self.paused

        def measure(self, step: int) -> None:
            clock, begin = self.train_seconds(), time.perf_counter()
            self.evals.append((step, clock, held_out_accuracy(model, tokenizer, task, max_new_tokens)))
            self.paused += time.perf_counter() - begin

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()
            self.measure(0)

        def on_step_end(self, args, state, control, **kwargs):
            self.step_times.append(self.train_seconds())
            if state.global_step % eval_every == 0 or state.global_step == steps:
                self.measure(state.global_step)

    config = GRPOConfig(
        output_dir=out_dir, use_cpu=True, bf16=False, gradient_checkpointing=False, seed=seed,
        per_device_train_batch_size=prompts_per_step * samples, num_generations=samples,
        max_completion_length=max_new_tokens, temperature=1.0, top_p=1.0, learning_rate=lr,
        lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0, weight_decay=0.0, beta=0.0,
        loss_type="dapo", scale_rewards="group", num_iterations=1, epsilon=0.2, optim="adamw_torch",
        max_steps=steps, logging_steps=max(eval_every, 1), save_strategy="no", report_to=[], disable_tqdm=True,
        dataloader_num_workers=0,
        **(dict(use_vllm=True, vllm_mode="colocate", vllm_max_model_length=max_model_len or None,
                vllm_enable_sleep_mode=False) if vllm else {}),
    )
    clock = HeldOutClock()
    trainer = GRPOTrainer(model=model, reward_funcs=exact_answer, args=config, train_dataset=data,
                          processing_class=tokenizer, callbacks=[clock])
    generating = [0.0]
    generate = trainer._generate  # TRL's one generation entry point (HF generate or vLLM), timed from outside

    def timed_generate(*args, **kwargs):
        begin = time.perf_counter()
        try:
            return generate(*args, **kwargs)
        finally:
            generating[0] += time.perf_counter() - begin

    trainer._generate = timed_generate
    trainer.train()
    steps_s = clock.step_times
    per_step = [b - a for a, b in zip(steps_s, steps_s[1:])]
    return {"evals": clock.evals, "step_seconds_median": sorted(per_step)[len(per_step) // 2] if per_step else None,
            "train_seconds": steps_s[-1] if steps_s else 0.0, "steps": len(steps_s),
            "generate_seconds": generating[0], "completion_tokens": completion_tokens[0]}
