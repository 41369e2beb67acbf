"""What a run's checkpoints depend on, so that resuming with different inputs fails naming the difference.

A checkpoint stores the dataset position, the retry queue and buffered samples by prompt index, and the
learner's optimizer state for one model. Resumed with another dataset, seed, batch shape or model, it
would fail deep inside (an IndexError) or, worse, continue silently on a different prompt order.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from areal.config import TrainConfig


def digest(value) -> str:
    """A short, stable digest of JSON-serialisable ``value``."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def model_digest(model_path: str | Path) -> str:
    """Digest of the model's architecture file (config.json, or model_index.json for a diffusers pipeline):
    trained weights change, the architecture and vocabulary a checkpoint's optimizer state fits do not."""
    for marker in ("config.json", "model_index.json"):
        path = Path(model_path, marker)
        if path.is_file():
            return digest(json.loads(path.read_text()))
    return "unknown"


def run_fingerprint(cfg: TrainConfig, dataset_digest: str, model_path: str | Path) -> dict:
    """{config key or input: value or digest} that a checkpoint of this run records (manifest meta);
    ``dataset_digest``: the task's digest of its training prompts (``Task.digest``: a dataset's file bytes, the
    rows kept and how they become prompts)."""
    reference = {"algo.kl_reference": str(Path(model_path).resolve())} if cfg.algo.kl_coef else {}
    return {
        **reference,  # the KL's reference policy is the starting model: a resume must keep it
        "task.type": cfg.task.type,
        "task.seed": cfg.task.seed,
        "dataset": dataset_digest,
        "seed": cfg.seed,
        "batch_size": cfg.batch_size,
        "rollout.samples_per_prompt": cfg.rollout.samples_per_prompt,
        "model": model_digest(model_path),
        # a LoRA checkpoint's optimizer state covers the adapters only: it fits no other LoRA shape
        "learner.lora": [cfg.learner.lora.rank, cfg.learner.lora.alpha, sorted(cfg.learner.lora.target_modules)],
    }


def fingerprint_mismatch(saved: dict, current: dict) -> list[str]:
    """One line per input that differs between a checkpoint and this run (keys only one side has are skipped:
    a checkpoint from an older version records fewer)."""
    what = {"dataset": "the training prompts (dataset digest)", "model": "the model (architecture digest)"}
    return [f"{what.get(key, key)}: checkpoint {saved[key]!r}, this run {current[key]!r}"
            for key in sorted(saved.keys() & current.keys()) if saved[key] != current[key]]
