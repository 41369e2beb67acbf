"""Task settings (``task.*``): which prompts, which reward."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List

from areal.config._checks import require
from areal.config.eval_sets import EvalSetConfig, check_reward_list, check_sources

TASK_TYPES = ("arithmetic", "dataset", "gsm8k", "image_prompts", "skip_count")
GSM8K_TEMPLATE = "Question: {question}\nAnswer:"  # task.type=gsm8k: a dataset with this template and math_verify
ARITHMETIC_TEMPLATE = "{a}{op}{b}="
ANSWER_FORMATS = ("exact", "last_number")
IMAGE_REWARDS = ("jpeg_compressibility", "jpeg_incompressibility", "aesthetic")


@dataclass
class TaskConfig:
    """The dataset of prompts and its reward."""

    type: str = "arithmetic"
    """dataset (your rows, read with Hugging Face datasets, scored by task.rewards), arithmetic (generated problems,
    exact-answer reward), gsm8k (a dataset of "question"/"answer" rows with the Question/Answer template and
    math_verify), skip_count (generated "40_down_by_7:" -> "40,33,26,19,12,5" problems whose answer lengths are
    long-tailed, exact-answer reward) or image_prompts (diffusion: prompts scored by an image reward)."""
    path: Any = ""
    """dataset/gsm8k: a .parquet, .jsonl, .json, .csv or .arrow file, a list of them, a directory written by
    Dataset.save_to_disk, or a dataset name for datasets.load_dataset. image_prompts: a text file with one prompt
    per line; empty = the class names of a class-conditional pipeline (its class_labels.json)."""
    split: str = "train"
    """dataset: the split of task.path to train on (local files hold one split, "train")."""
    prompt_key: str = "prompt"
    """dataset: the column holding the prompt: a string, or a list of chat messages {role, content} (system turns
    included) rendered with the model's chat template."""
    answer_key: str = "answer"
    """dataset: the column holding the reference answer (math_verify's gold, verl's ground_truth)."""
    rewards: List[str] = field(default_factory=list)
    """dataset: the reward functions, summed with task.reward_weights: built-ins (math_verify, think_format,
    code_tests, soft_overlong, http), "package.module:function" or "path/to/file.py:function" (TRL-style:
    fn(prompts, completions, **columns) -> list[float | None], async allowed), "verl:package.module:function"
    (verl-style compute_score(data_source, solution_str, ground_truth, extra_info)). The first one decides
    correctness at evaluation (task.correct_threshold). gsm8k: empty = [math_verify]."""
    reward_weights: List[float] = field(default_factory=list)
    """dataset: one weight per entry of task.rewards; empty = all 1.0."""
    reward_url: str = ""
    """dataset with the http reward: the reward server a group is POSTed to as JSON (prompts, completions,
    completion_ids, columns); it answers {"rewards": [...]} or a list, one number or null per completion."""
    reward_http_timeout_s: float = 2.5
    """http reward: the timeout of one request."""
    reward_http_retries: int = 2
    """http reward: further attempts after a server error, timeout or connection error (a 4xx is not retried)."""
    overlong_buffer: int = 0
    """soft_overlong reward: the buffer Lc, in tokens, before rollout.max_new_tokens where the penalty ramps from 0
    to -1 (DAPO); 0 = a quarter of rollout.max_new_tokens."""
    tests_key: str = "tests"
    """code_tests reward: the column holding the assert statements a completion's program must pass."""
    correct_threshold: float = 1.0
    """Evaluation: a completion is correct when the first reward of task.rewards scores at least this
    (accuracy, pass@k)."""
    eval_k: int = 0
    """Evaluation: besides the greedy completion, sample this many completions per held-out prompt at
    rollout.temperature and report pass@k (unbiased estimator) and mean@k; 0 = greedy only."""
    eval_split: str = ""
    """dataset: the split of task.eval_path (or of task.path, for a hub dataset with a test split); empty = task.split
    when task.eval_path is set."""
    eval_sets: List[EvalSetConfig] = field(default_factory=list)
    """dataset: more held-out sets, each logged under eval/<name>/ (its own path, split, size, keys, rewards, k)."""
    reward: str = "jpeg_compressibility"
    """image_prompts: jpeg_compressibility, jpeg_incompressibility, aesthetic (needs reward_model_path) or
    "package.module:name" of your own ImageReward class, instance or function (image, prompt) -> float."""
    reward_model_path: str = ""
    """image_prompts with reward=aesthetic: local directory of a CLIP model plus aesthetic_head.safetensors."""
    eval_path: Any = ""
    """dataset/gsm8k: the held-out rows (a file, a list of files, a saved directory or a dataset name); empty = hold
    out task.eval_size rows of task.path, drawn with task.seed."""
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
    prompt_template: str = ""
    """dataset: a string prompt built from columns ("Solve: {problem}"), instead of the task.prompt_key column.
    arithmetic: the prompt text with fields {a}, {op}, {b} (e.g. "What is {a} {op} {b}? Answer with the number
    only." for an instruct model); empty = "{a}{op}{b}=". gsm8k: empty = "Question: {question}\nAnswer:"."""
    answer_format: str = "exact"
    """arithmetic: how the reply is scored. exact: the reply, up to its end (newline or EOS), is the number and
    nothing else. last_number: the last integer in the reply is the answer ("The answer is 12." scores; a reply
    that runs out of tokens before the answer does not), for chat models that answer in sentences."""
    max_terms: int = 48
    """skip_count: the most terms an answer has (a term is 1-4 digits and a comma)."""
    terms_exponent: float = 1.2
    """skip_count: the number of terms n of a problem is drawn with P(n) proportional to n^-terms_exponent on
    [1, task.max_terms]: 0 = uniform, larger = shorter answers with a thinner tail."""
    chat_template: str = "auto"
    """Text tasks: "auto" renders each prompt as a user turn in the tokenizer's chat template when it has one
    (instruct models), "none" feeds the raw text (rollouts/prompt_format.py)."""
    system_prompt: str = ""
    """Text tasks in chat format: a system turn before each prompt ("" = none; the template may add its own)."""
    seed: int = 0
    """Problem generation and shuffling seed."""
    eval_size: int = 200
    """Held-out prompts scored at each evaluation (dataset: at most this many rows of task.eval_path, or rows held
    out of task.path; image_prompts: images from fixed seeds, cycling the prompts; they also make the sample
    grid)."""
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
        # (no field is filled in here: an instance made while registering the schema would change its defaults)
        if self.is_dataset:
            check_dataset(self)
        require(self.type != "image_prompts" or self.reward in IMAGE_REWARDS or ":" in self.reward, "task.reward",
                self.reward, f"one of {', '.join(IMAGE_REWARDS)} or 'package.module:name'")
        require(self.reward != "aesthetic" or bool(self.reward_model_path), "task.reward_model_path",
                self.reward_model_path, "a local directory with the CLIP model and aesthetic_head.safetensors")
        if self.type == "arithmetic":
            check_arithmetic(self)
        require(self.max_terms >= 1, "task.max_terms", self.max_terms, "an int >= 1")
        require(self.terms_exponent >= 0, "task.terms_exponent", self.terms_exponent, "a number >= 0")
        require(self.chat_template in ("auto", "none"), "task.chat_template", self.chat_template,
                "'auto' (the tokenizer's chat template when it has one) or 'none' (raw text)")
        require(self.eval_size >= 1, "task.eval_size", self.eval_size, "an int >= 1")
        require(self.eval_k >= 0, "task.eval_k", self.eval_k, "an int >= 0 (0 = greedy only)")
        require(not self.eval_sets or self.is_dataset, "task.eval_sets", [s.name for s in self.eval_sets],
                "empty unless task.type=dataset (or gsm8k)")
        require(self.reward_timeout_s > 0, "task.reward_timeout_s", self.reward_timeout_s,
                "a positive number of seconds")
        require(self.reward_workers >= 1, "task.reward_workers", self.reward_workers, "an int >= 1")
        require(self.reward_memory_mb >= 256, "task.reward_memory_mb", self.reward_memory_mb,
                "an int >= 256 (MB of address space per reward process)")

    @property
    def template(self) -> str:
        """task.prompt_template, or the task type's own (arithmetic's bare problem, GSM8K's Question/Answer)."""
        return self.prompt_template or {"arithmetic": ARITHMETIC_TEMPLATE, "gsm8k": GSM8K_TEMPLATE}.get(self.type, "")

    @property
    def reward_names(self) -> list[str]:
        """task.rewards, or gsm8k's math_verify."""
        return list(self.rewards) or (["math_verify"] if self.type == "gsm8k" else [])

    def eval_plan(self) -> dict[str, int]:
        """Samples per prompt (k) of each held-out set, by name ("eval": the default one)."""
        plan = {"eval": self.eval_k}
        for extra in self.eval_sets:
            plan[extra.name] = self.eval_k if extra.k < 0 else extra.k
        return plan

    @property
    def uses_http(self) -> bool:
        """Some reward (of training or of a held-out set) is the http reward server."""
        return "http" in self.reward_names or any("http" in s.rewards for s in self.eval_sets)

    @property
    def is_dataset(self) -> bool:
        """Rows read with Hugging Face datasets and scored by task.rewards (task.type dataset or gsm8k)."""
        return self.type in ("dataset", "gsm8k")


def check_dataset(cfg: TaskConfig) -> None:
    """A dataset task names its rows, its columns and at least one reward, each well formed."""
    check_sources(cfg.path, "task.path", required=True)
    check_sources(cfg.eval_path, "task.eval_path", required=False)
    require(bool(cfg.split), "task.split", cfg.split, "a split name (local files hold one split, train)")
    require(bool(cfg.prompt_key) or bool(cfg.template), "task.prompt_key", cfg.prompt_key,
            "the column holding the prompt (or set task.prompt_template)")
    require(bool(cfg.reward_names), "task.rewards", list(cfg.rewards),
            "at least one reward, e.g. [math_verify] or [my_rewards:accuracy] (a function in my_rewards.py)")
    check_reward_list(cfg.reward_names, cfg.reward_weights, "task")
    require(not cfg.uses_http or cfg.reward_url.startswith(("http://", "https://")), "task.reward_url", cfg.reward_url,
            "the reward server's http:// or https:// URL (the http reward POSTs each group there)")
    require(cfg.reward_http_timeout_s > 0, "task.reward_http_timeout_s", cfg.reward_http_timeout_s,
            "a positive number of seconds")
    require(cfg.reward_http_retries >= 0, "task.reward_http_retries", cfg.reward_http_retries, "an int >= 0")
    require(cfg.overlong_buffer >= 0, "task.overlong_buffer", cfg.overlong_buffer,
            "an int >= 0 (0 = a quarter of rollout.max_new_tokens)")
    names = [s.name for s in cfg.eval_sets]
    require(len(set(names)) == len(names) and "eval" not in names, "task.eval_sets", names,
            "distinct names, none of them 'eval' (the default held-out set's)")


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
        cfg.template.format(a=1, op="+", b=2)
    except (KeyError, IndexError, ValueError) as exc:
        require(False, "task.prompt_template", cfg.template,
                f"a format string with fields {{a}}, {{op}}, {{b}} only ({type(exc).__name__}: {exc}); write "
                "literal braces as {{ and }}")
