"""Task settings (``task.*``): which prompts, which reward."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from areal.config._checks import require

TASK_TYPES = ("arithmetic", "gsm8k", "image_prompts")
ANSWER_FORMATS = ("exact", "last_number")
IMAGE_REWARDS = ("jpeg_compressibility", "jpeg_incompressibility", "aesthetic")


@dataclass
class TaskConfig:
    """The dataset of prompts and its reward."""

    type: str = "arithmetic"
    """arithmetic (generated problems, exact-answer reward), gsm8k (JSONL, math-verify reward) or image_prompts
    (diffusion: prompts scored by an image reward)."""
    path: str = ""
    """gsm8k: a JSONL file with "question" and "answer" fields. image_prompts: a text file with one prompt per
    line; empty = the class names of a class-conditional pipeline (its class_labels.json)."""
    reward: str = "jpeg_compressibility"
    """image_prompts: jpeg_compressibility, jpeg_incompressibility, aesthetic (needs reward_model_path) or
    "package.module:name" of your own ImageReward class, instance or function (image, prompt) -> float."""
    reward_model_path: str = ""
    """image_prompts with reward=aesthetic: local directory of a CLIP model plus aesthetic_head.safetensors."""
    eval_path: str = ""
    """gsm8k: held-out JSONL; empty = hold out the last eval_size rows of path."""
    operators: List[str] = field(default_factory=lambda: ["+"])
    """arithmetic: the operators problems are drawn from (+, -, *)."""
    min_operand: int = 10
    """arithmetic: smallest operand."""
    max_operand: int = 99
    """arithmetic: largest operand."""
    min_operand_b: int = -1
    """arithmetic: smallest second operand; -1 = min_operand (e.g. 3-digit x 2-digit: min_operand=100,
    max_operand=999, min_operand_b=10, max_operand_b=99)."""
    max_operand_b: int = -1
    """arithmetic: largest second operand; -1 = max_operand."""
    prompt_template: str = "{a}{op}{b}="
    """arithmetic: the prompt text, with fields {a}, {op}, {b} (e.g. "What is {a} {op} {b}? Answer with the number
    only." for an instruct model)."""
    answer_format: str = "exact"
    """arithmetic: how the reply is scored. exact: the reply, up to its end (newline or EOS), is the number and
    nothing else. last_number: the last integer in the reply is the answer ("The answer is 12." scores; a reply
    that runs out of tokens before the answer does not), for chat models that answer in sentences."""
    chat_template: str = "auto"
    """Text tasks: "auto" renders each prompt as a user turn in the tokenizer's chat template when it has one
    (instruct models), "none" feeds the raw text (rollouts/prompt_format.py)."""
    system_prompt: str = ""
    """Text tasks in chat format: a system turn before each prompt ("" = none; the template may add its own)."""
    seed: int = 0
    """Problem generation and shuffling seed."""
    eval_size: int = 200
    """Held-out prompts scored at each evaluation (image_prompts: images from fixed seeds, cycling the prompts;
    they also make the sample grid)."""
    reward_timeout_s: float = 10.0
    """A reward computation that takes longer is killed (its process replaced) and counted as a timeout; the
    sample gets no score and is not trained on."""
    reward_workers: int = 2
    """Processes per rollout worker that compute rewards (held-out scores too), each scoring one output at a
    time; started once with the rollout worker."""
    reward_memory_mb: int = 8192
    """Address-space limit (RLIMIT_AS) of each reward process, in MB: a reward that allocates more fails with
    status memory. Virtual, not resident, memory: a scorer model on torch needs a few GB."""

    def __post_init__(self):
        require(self.type in TASK_TYPES, "task.type", self.type, f"one of {', '.join(TASK_TYPES)}")
        require(self.type != "gsm8k" or bool(self.path), "task.path", self.path, "a JSONL file for task.type=gsm8k")
        require(self.type != "image_prompts" or self.reward in IMAGE_REWARDS or ":" in self.reward, "task.reward",
                self.reward, f"one of {', '.join(IMAGE_REWARDS)} or 'package.module:name'")
        require(self.reward != "aesthetic" or bool(self.reward_model_path), "task.reward_model_path",
                self.reward_model_path, "a local directory with the CLIP model and aesthetic_head.safetensors")
        if self.type == "arithmetic":
            check_arithmetic(self)
        require(self.chat_template in ("auto", "none"), "task.chat_template", self.chat_template,
                "'auto' (the tokenizer's chat template when it has one) or 'none' (raw text)")
        require(self.eval_size >= 1, "task.eval_size", self.eval_size, "an int >= 1")
        require(self.reward_timeout_s > 0, "task.reward_timeout_s", self.reward_timeout_s,
                "a positive number of seconds")
        require(self.reward_workers >= 1, "task.reward_workers", self.reward_workers, "an int >= 1")
        require(self.reward_memory_mb >= 256, "task.reward_memory_mb", self.reward_memory_mb,
                "an int >= 256 (MB of address space per reward process)")


def check_arithmetic(cfg: TaskConfig) -> None:
    """The arithmetic problem space and prompt template are well formed."""
    require(bool(cfg.operators) and set(cfg.operators) <= {"+", "-", "*"}, "task.operators", list(cfg.operators),
            "a non-empty list of +, - and *")
    require(0 <= cfg.min_operand <= cfg.max_operand, "task.min_operand/max_operand",
            (cfg.min_operand, cfg.max_operand), "0 <= min_operand <= max_operand")
    lo_b = cfg.min_operand if cfg.min_operand_b < 0 else cfg.min_operand_b
    hi_b = cfg.max_operand if cfg.max_operand_b < 0 else cfg.max_operand_b
    require(0 <= lo_b <= hi_b, "task.min_operand_b/max_operand_b", (cfg.min_operand_b, cfg.max_operand_b),
            "0 <= min_operand_b <= max_operand_b (-1: the first operand's bound)")
    require(cfg.answer_format in ANSWER_FORMATS, "task.answer_format", cfg.answer_format,
            f"one of {', '.join(ANSWER_FORMATS)}")
    try:
        cfg.prompt_template.format(a=1, op="+", b=2)
    except (KeyError, IndexError, ValueError) as exc:
        require(False, "task.prompt_template", cfg.prompt_template,
                f"a format string with fields {{a}}, {{op}}, {{b}} only ({type(exc).__name__}: {exc}); write "
                "literal braces as {{ and }}")
