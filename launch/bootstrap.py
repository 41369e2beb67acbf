"""Warm start for the CPU demos: a tiny model taught a generated task by supervised learning, partly.

No pretrained model exists here, and RL from a random model never sees a
reward. So the demo's model is trained with teacher forcing on the task's
(arithmetic, skip counting) train split until its greedy held-out accuracy reaches ``target_accuracy``
(partly right, leaving RL visible headroom), then saved in Hugging Face format.

The result is cached: ``bootstrap.json`` next to the weights records the
settings and their hash; a later call with the same settings reuses the model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Sequence

from launch.tiny_model import TinyModelSize, build_char_tokenizer, build_tiny_model, save_model
from rollouts.tasks.arithmetic import ArithmeticTask
from rollouts.tasks.base import Task, TaskSample
from rollouts.tasks.skip_count import SkipCountTask

log = logging.getLogger(__name__)

SETTINGS_FILE = "bootstrap.json"
WARM_START_TASKS = {"arithmetic": ArithmeticTask, "skip_count": SkipCountTask}
FORMAT_VERSION = 2  # bump when the training recipe changes, so old caches are not reused


def encode_batch(tokenizer, texts: Sequence[str], pad_left: bool):
    """Token ids of ``texts`` padded to one length: (input_ids [B, T], attention_mask [B, T])."""
    import torch

    rows = [tokenizer.encode(t) for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        cols = slice(width - len(r), width) if pad_left else slice(0, len(r))
        ids[i, cols] = torch.tensor(r, dtype=torch.long)
        mask[i, cols] = 1
    return ids, mask


def position_ids(attention_mask):
    """Positions counted from each row's first real token, so left padding does not shift them."""
    return (attention_mask.cumsum(-1) - 1).clamp_min(0)


def decode_until_eos(tokenizer, token_ids: Sequence[int]) -> str:
    """Text of the tokens before the first EOS (what an engine that stops at EOS returns)."""
    ids = list(token_ids)
    if tokenizer.eos_token_id in ids:
        ids = ids[: ids.index(tokenizer.eos_token_id)]
    return tokenizer.decode(ids, skip_special_tokens=True)


def greedy_completions(
    model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 256
) -> list[str]:
    """Greedy completions of ``prompts`` with a KV cache, batched with left padding."""
    import torch

    out: list[str] = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            ids, mask = encode_batch(tokenizer, prompts[start : start + batch_size], pad_left=True)
            seqs = model.generate(
                input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )
            out.extend(decode_until_eos(tokenizer, row[ids.shape[1]:].tolist()) for row in seqs)
    return out


def greedy_accuracy(model, tokenizer, task: Task, samples: Sequence[TaskSample], max_new_tokens: int) -> float:
    """Mean ``task.score`` of greedy completions over ``samples`` (held-out accuracy)."""
    completions = greedy_completions(model, tokenizer, [s.prompt for s in samples], max_new_tokens)
    return sum(task.score(c, s) for c, s in zip(completions, samples)) / len(samples)


def sft_batch(tokenizer, samples: Sequence[TaskSample], answer_suffix: str = "", transcript: str = "answer"):
    """Teacher-forcing tensors for prompt + reference + suffix + EOS; labels are -100 except answer and EOS. With
    ``transcript="calculator"`` a tool call and its result come before the answer (``calculator_transcript``),
    the result unlabelled: the environment writes it, the model only reads it."""
    import torch

    rows, labelled = [], []
    for s in samples:
        parts = (calculator_transcript(s) if transcript == "calculator" else [(s.reference, True)])
        parts = [(s.prompt, False), *parts[:-1], (parts[-1][0] + answer_suffix, True)]
        row, keep = [], []
        for text, trained in parts:
            ids = tokenizer.encode(text)
            row += ids
            keep += [trained] * len(ids)
        rows.append(row + [tokenizer.eos_token_id])
        labelled.append(keep + [True])
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (r, keep) in enumerate(zip(rows, labelled)):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
        labels[i, : len(r)] = torch.where(torch.tensor(keep), ids[i, : len(r)], -100)
    return ids, mask, labels


def sft_backward(model, tokenizer, samples: Sequence[TaskSample], length_buckets: int, answer_suffix: str,
                 transcript: str):
    """Backward of the batch's mean token loss; returns it. With ``length_buckets`` > 1 the samples are sorted by
    length and run as that many padded pieces, each weighted by its share of the labelled tokens (the same
    gradient as one piece): a long-tailed batch then pads its short rows to their bucket's longest, not the batch's.
    """
    if length_buckets <= 1:
        ids, mask, labels = sft_batch(tokenizer, samples, answer_suffix, transcript)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        return loss.detach()
    ordered = sorted(samples, key=lambda s: len(s.prompt) + len(s.reference))
    size = -(-len(ordered) // length_buckets)
    pieces = [sft_batch(tokenizer, ordered[i:i + size], answer_suffix, transcript)
              for i in range(0, len(ordered), size)]
    counts = [int((labels[:, 1:] != -100).sum()) for _, _, labels in pieces]  # the model's loss shifts labels by one
    total = 0.0
    for (ids, mask, labels), count in zip(pieces, counts):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss * (count / sum(counts))
        loss.backward()
        total += loss.detach()
    return total


def calculator_transcript(sample: TaskSample) -> list[tuple[str, bool]]:
    """(text, written by the model) parts of an answer found with the calculator: ``[calculator 347*28]``, the
    environment's ``{9716}``, then ``9716`` (arithmetic samples' ids are their expressions)."""
    from rollouts.envs.tool_calls import TaggedToolCalls

    syntax = TaggedToolCalls()
    call = f"{syntax.open_bracket}calculator {sample.id}{syntax.close_bracket}"
    return [(call, True), (syntax.format_result(sample.reference), False), (sample.reference, True)]


def greedy_tool_accuracy(model, tokenizer, task: Task, samples: Sequence[TaskSample], max_new_tokens: int) -> float:
    """Held-out accuracy of greedy episodes with the calculator (one call at most), played as a run plays them:
    the first turn ends at the call's ``]`` or EOS, the calculator's answer is appended, the next turn answers."""
    from rollouts.envs.calculator import calculator_tool
    from rollouts.envs.tool_calls import TaggedToolCalls
    from rollouts.envs.tool_env import ToolEnvironment

    envs = [ToolEnvironment(task, [calculator_tool()], TaggedToolCalls(), max_tool_calls=1) for _ in samples]
    transcripts = [env.reset(s) for env, s in zip(envs, samples)]
    rewards = [0.0] * len(samples)
    playing = list(range(len(samples)))
    for _ in range(2):  # a call and an answer
        turns = greedy_completions(model, tokenizer, [transcripts[i] for i in playing], max_new_tokens)
        still = []
        for i, text in zip(playing, turns):
            action = text.split("]", 1)[0] + "]" if "]" in text else text  # the engine stops at "]"
            result = envs[i].step(action)
            rewards[i] += result.reward
            if not result.done:
                transcripts[i] += action + result.observation
                still.append(i)
        playing = still
    return sum(rewards) / len(samples)


def check_runtime_tokenizer(model, tokenizer, task: Task, out_dir: Path) -> None:
    """The tokenizer a run loads from ``out_dir`` must encode every prompt as the one the warm start trains with.

    transformers loads it as the tokenizer class the model's config names (Qwen2's), not the char tokenizer
    saved, and that one drops whitespace: a prompt with spaces would be trained on one way and served another
    (seen: 0.305 held-out in training, 0.000 from the saved model). Checked before training, not after it.
    """
    from transformers import AutoTokenizer

    # what AutoTokenizer reads (the config names the tokenizer class); weights and bootstrap.json come at the end
    model.config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    loaded = AutoTokenizer.from_pretrained(out_dir)
    for sample in (*task.eval, *task.train):
        if loaded.encode(sample.prompt) != tokenizer.encode(sample.prompt):
            raise ValueError(f"bootstrap: the saved tokenizer reads prompt {sample.prompt!r} as "
                             f"{loaded.convert_ids_to_tokens(loaded.encode(sample.prompt))}, the warm start as "
                             f"{tokenizer.convert_ids_to_tokens(tokenizer.encode(sample.prompt))}: write prompts "
                             "without whitespace for the tiny char-level model")


def _settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _cached(out_dir: Path, digest: str) -> dict | None:
    record_path = out_dir / SETTINGS_FILE
    if not (record_path.is_file() and (out_dir / "model.safetensors").is_file()
            and (out_dir / "tokenizer.json").is_file()):
        return None
    record = json.loads(record_path.read_text())
    return record if record.get("hash") == digest else None


def _train_until_target(model, tokenizer, task: ArithmeticTask | SkipCountTask, seed: int, target_accuracy: float,
                        max_steps: int, batch_size: int, lr: float, warmup_steps: int, eval_every: int,
                        answer_suffix: str = "", transcript: str = "answer", length_buckets: int = 1) -> dict:
    """Teacher-forced SFT on ``task.train``; stops at the first evaluation reaching the target."""
    import torch

    held_out, train = list(task.eval), task.train
    max_new_tokens = task.max_answer_chars + 2  # room for the EOS and one token past it
    accuracy_of = greedy_accuracy
    if transcript == "calculator":
        accuracy_of = greedy_tool_accuracy
        max_new_tokens = len(calculator_transcript(task.eval[0])[0][0]) + task.max_answer_chars + 2
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    # linear warm-up then constant: the run stops early at a target, so no decay horizon exists
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, warmup_steps)))
    generator = torch.Generator().manual_seed(seed)
    start, step, accuracy, loss_value = time.perf_counter(), 0, 0.0, math.nan
    log.info("bootstrap: %d params, %d train problems, target held-out accuracy %.2f",
             sum(p.numel() for p in model.parameters()), len(train), target_accuracy)
    while step < max_steps:
        model.train()
        picks = torch.randint(len(train), (batch_size,), generator=generator).tolist()
        optimizer.zero_grad(set_to_none=True)
        loss = sft_backward(model, tokenizer, [train[i] for i in picks], length_buckets, answer_suffix, transcript)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        step, loss_value = step + 1, loss.item()
        if step % eval_every == 0 or step == max_steps:
            accuracy = accuracy_of(model, tokenizer, task, held_out, max_new_tokens)
            log.info("bootstrap: step %d loss %.4f held-out accuracy %.3f (%.1fs)",
                     step, loss_value, accuracy, time.perf_counter() - start)
            if accuracy >= target_accuracy:
                break
    if accuracy < target_accuracy:
        log.warning("bootstrap: held-out accuracy %.3f is below target %.2f after max_steps=%d; saving it anyway",
                    accuracy, target_accuracy, max_steps)
    return {"steps": step, "final_loss": loss_value, "eval_accuracy": accuracy,
            "train_seconds": round(time.perf_counter() - start, 2)}


def bootstrap_model(
    out_dir: str | Path,
    seed: int = 0,
    *,
    size: TinyModelSize = TinyModelSize(),
    task_kwargs: dict | None = None,
    target_accuracy: float = 0.3,
    max_steps: int = 3000,
    batch_size: int = 64,
    lr: float = 1e-3,
    warmup_steps: int = 50,
    eval_every: int = 25,
    eval_size: int = 200,
    force: bool = False,
    answer_suffix: str = "",
    transcript: str = "answer",
    task_type: str = "arithmetic",
    length_buckets: int = 1,
) -> Path:
    """Build, warm-start (SFT on the task's train split) and save the tiny model; cached by settings.

    Training stops at the first evaluation whose greedy accuracy on ``eval_size``
    held-out problems is >= ``target_accuracy``, or after ``max_steps``.
    ``task_type``: "arithmetic" or "skip_count"; ``task_kwargs`` go to its task class (``ArithmeticTask``'s operand
    range and operators, ``SkipCountTask``'s max_terms and exponent; not ``eval_size``). ``transcript``:
    "answer" (the answer alone) or "calculator" (the answer found with a calculator call, for multi-turn runs).
    ``length_buckets``: pieces a batch runs in, by length (``sft_backward``), for tasks whose lengths vary a lot.
    """
    import torch

    out_dir = Path(out_dir)
    task_kwargs = dict(task_kwargs or {})
    settings = {
        "format_version": FORMAT_VERSION, "seed": seed, "size": dataclasses.asdict(size), "task": task_kwargs,
        "target_accuracy": target_accuracy, "max_steps": max_steps, "batch_size": batch_size, "lr": lr,
        "warmup_steps": warmup_steps, "eval_every": eval_every, "eval_size": eval_size,
    }
    if answer_suffix:  # only when set, so caches of the default recipe stay valid
        settings["answer_suffix"] = answer_suffix
    if transcript != "answer":
        settings["transcript"] = transcript
    if task_type != "arithmetic":
        settings["task_type"] = task_type
    if length_buckets > 1:
        settings["length_buckets"] = length_buckets
    digest = _settings_hash(settings)
    if not force and (record := _cached(out_dir, digest)) is not None:
        log.info("bootstrap: reusing %s (hash %s, held-out accuracy %.3f)", out_dir, digest, record["eval_accuracy"])
        return out_dir

    task = WARM_START_TASKS[task_type](seed=seed, eval_size=eval_size, **task_kwargs)
    tokenizer = build_char_tokenizer()
    threads = torch.get_num_threads()
    # Float sums differ with the thread count, and this short SFT is chaotic enough that they
    # change the model (seen: 250 vs 850 steps to the target for one seed): one thread makes
    # the warm start the same on every machine, and the model is small enough for one core.
    torch.set_num_threads(1)
    try:
        model = build_tiny_model(tokenizer, size, seed)
        check_runtime_tokenizer(model, tokenizer, task, out_dir)
        result = _train_until_target(model, tokenizer, task, seed, target_accuracy, max_steps, batch_size, lr,
                                     warmup_steps, eval_every, answer_suffix, transcript, length_buckets)
    finally:
        torch.set_num_threads(threads)
    save_model(model, tokenizer, out_dir)
    record = {"hash": digest, "settings": settings, **result}
    # written last: its presence with a matching hash is what marks the cache complete
    (out_dir / SETTINGS_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))
    log.info("bootstrap: saved %s after %d steps, held-out accuracy %.3f", out_dir, result["steps"],
             result["eval_accuracy"])
    return out_dir
