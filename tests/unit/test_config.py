"""Configs: typed, composed by Hydra, and rejected before any actor starts with the key named."""

from pathlib import Path

import pytest

from areal.config import TrainConfig
from launch.config_loader import ConfigError, load_config


def test_the_demo_preset_composes_into_typed_dataclasses():
    cfg, resolved = load_config(["experiment=arith_tiny", "rollout.workers=2", "algo.max_staleness=4"])
    assert isinstance(cfg, TrainConfig)
    assert cfg.rollout.workers == 2 and cfg.algo.max_staleness == 4
    assert "samples_per_prompt" in resolved


@pytest.mark.parametrize(
    "override, named",
    [
        ("rollout.workers=abc", "rollout.workers"),
        ("rollout.wrokers=2", "wrokers"),
        ("algo.max_staleness=-1", "algo.max_staleness"),
        ("algo.advantage=ppo9", "algo.advantage"),
        ("learner.zero_stage=5", "learner.zero_stage"),
        ("rollout.max_new_tokens=999", "rollout.max_new_tokens"),
        ("experiment=nope", "experiment/nope"),
        ("task.type=gsm8k", "task.path"),
        ("learner.aggregator=median", "learner.aggregator"),
        ("learner.byzantine.attack=loud", "learner.byzantine.attack"),
        ("learner.byzantine.ranks=[3]", "learner.byzantine.ranks"),
        ("checkpoint.keep_last=0", "checkpoint.keep_last"),
        ("learner.lr_decay=linear", "learner.lr_decay"),
        ("rollout.sync_every=0", "rollout.sync_every"),
        ("engine.kv_on_update=drop", "engine.kv_on_update"),
        ("task.prompt_template='{a} plus {c}'", "task.prompt_template"),
        ("task.operators=[/]", "task.operators"),
        ("task.min_operand=100", "task.min_operand"),
        ("learner.lora.rank=-1", "learner.lora.rank"),
        ("learner.lora.alpha=-2", "learner.lora.alpha"),
        ("learner.lora.dropout=1.0", "learner.lora.dropout"),
        ("learner.lora.target_modules=[]", "learner.lora.target_modules"),
        ("learner.lora.rnak=8", "rnak"),
    ],
)
def test_bad_values_fail_at_load_naming_the_field(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config([override])


DATA = ["task.type=dataset", "task.path=data.parquet"]


@pytest.mark.parametrize(
    "overrides, named",
    [
        (["task.type=dataset"], "task.path"),
        (DATA, r"task.rewards.*at least one reward"),
        ([*DATA, "task.rewards=[mathverify]"], r"task.rewards.*'mathverify' is none of them"),
        ([*DATA, "task.rewards=[math_verify,x:y]", "task.reward_weights=[1.0]"], r"task.reward_weights.*one weight"),
        ([*DATA, "task.rewards=[http]"], r"task.reward_url.*http://"),
        ([*DATA, "task.rewards=[http]", "task.reward_url=http://127.0.0.1:9/r", "task.reward_http_timeout_s=4"],
         r"task.reward_timeout_s.*worst case"),
        ([*DATA, "task.rewards=[math_verify]", "task.eval_k=-1"], "task.eval_k"),
        ([*DATA, "task.rewards=[math_verify]", "task.eval_sets=[{name:eval,path:x.parquet}]"], "task.eval_sets"),
        ([*DATA, "task.rewards=[math_verify]", "task.eval_sets=[{name:hard}]"], r"task.eval_sets\[hard\].path"),
        ([*DATA, "task.rewards=[math_verify]", "task.eval_sets=[{name:hard,path:h.parquet,rewards:[nope]}]"],
         r"task.eval_sets\[hard\].rewards"),
        ([*DATA, "task.rewards=[math_verify]", "env.type=tools"], "env.type"),
        (["task.eval_sets=[{name:hard,path:h.parquet}]"], r"task.eval_sets.*unless task.type=dataset"),
        (["experiment=ddpo_tiny", "task.eval_k=4"], r"task.eval_k.*diffusers"),
    ],
)
def test_dataset_and_reward_settings_fail_at_load_naming_the_key(overrides, named):
    with pytest.raises(ConfigError, match=named):
        load_config(overrides)


def test_a_dataset_task_composes_with_its_rewards_sets_and_gsm8k_defaults():
    cfg, _ = load_config([*DATA, "task.rewards=[math_verify,my_rewards:fmt]", "task.reward_weights=[1,0.5]",
                          "task.eval_k=4", "task.eval_sets=[{name:hard,path:h.parquet,k:0},{name:more,path:m.jsonl}]"])
    assert cfg.task.is_dataset and cfg.task.reward_weights == [1.0, 0.5]
    assert cfg.task.eval_plan() == {"eval": 4, "hard": 0, "more": 4}
    cfg, _ = load_config(["task.type=gsm8k", "task.path=g.jsonl"])
    assert cfg.task.reward_names == ["math_verify"] and cfg.task.template == "Question: {question}\nAnswer:"
    cfg, _ = load_config([])  # the schema's defaults are not changed by the presets' types
    assert cfg.task.template == "{a}{op}{b}=" and cfg.task.prompt_template == "" and cfg.task.reward_names == []


def test_lora_is_off_by_default_and_set_per_key():
    cfg, _ = load_config([])
    assert cfg.learner.lora.rank == 0 and "q_proj" in cfg.learner.lora.target_modules
    cfg, _ = load_config(["learner.lora.rank=8", "learner.lora.target_modules=[q_proj,v_proj]"])
    assert cfg.learner.lora.rank == 8 and cfg.learner.lora.scale == 1.0  # alpha 0 = rank
    assert cfg.learner.lora.target_modules == ["q_proj", "v_proj"]


def test_a_robust_aggregator_refuses_groups_too_small_for_f_and_zero_stages_it_cannot_see():
    with pytest.raises(ConfigError, match=r"bulyan needs n >= 4f \+ 3 \(learner.workers=5, learner.aggregator_f=1\)"):
        load_config(["learner.workers=5", "learner.aggregator=bulyan", "learner.aggregator_f=1"])
    with pytest.raises(ConfigError, match="learner.zero_stage.*use learner.aggregator=mean for ZeRO"):
        load_config(["learner.workers=3", "learner.aggregator=krum", "learner.zero_stage=2"])
    cfg, _ = load_config(["learner.workers=5", "learner.aggregator=flag", "learner.aggregator_f=1",
                          "learner.byzantine.ranks=[4]", "learner.byzantine.attack=little_is_enough"])
    assert cfg.learner.gathers_gradients and cfg.learner.byzantine.ranks == [4]
    assert cfg.learner.aggregator_params() == {"m": None, "lam": 0.0, "iters": 1, "rescale": "median_norm"}


def test_the_learning_rate_warms_up_linearly_then_follows_a_cosine_to_zero():
    from areal.config import LearnerConfig
    from learners.deepspeed_setup import lr_factor

    factor = lr_factor(LearnerConfig(warmup_steps=4, lr_decay="cosine"), total_updates=14)
    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(9) == pytest.approx(0.5) and factor(14) == pytest.approx(0.0) and factor(99) == pytest.approx(0.0)
    assert lr_factor(LearnerConfig(), 10)(7) == 1.0


def test_the_diffusion_preset_composes_and_its_mistakes_are_named():
    cfg, _ = load_config(["experiment=ddpo_tiny"])
    assert cfg.is_diffusion and cfg.task.type == "image_prompts" and cfg.diffusion.trained_steps == 5
    for overrides, named in ((["diffusion.eta=0"], "diffusion.eta"), (["task.type=arithmetic"], "task.type"),
                             (["diffusion.timestep_fraction=1.5"], "diffusion.timestep_fraction"),
                             (["task.reward=beauty"], "task.reward"),
                             (["task.reward=aesthetic"], "task.reward_model_path")):
        with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
            load_config(["experiment=ddpo_tiny", *overrides])
    with pytest.raises(ConfigError, match="task.type"):
        load_config(["experiment=arith_tiny", "engine.type=diffusers"])


def test_reward_process_settings_are_checked_and_named():
    cfg, _ = load_config(["experiment=arith_tiny", "task.reward_workers=3", "task.reward_memory_mb=2048"])
    assert (cfg.task.reward_workers, cfg.task.reward_memory_mb) == (3, 2048)
    for override, named in (("task.reward_workers=0", "task.reward_workers"),
                            ("task.reward_memory_mb=100", "task.reward_memory_mb")):
        with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
            load_config(["experiment=arith_tiny", override])


def test_node_pools_are_custom_resources_checked_and_named():
    cfg, _ = load_config(["+rollout.resources.rollout_pool=1", "+learner.resources={learner_pool: 0.5}"])
    assert cfg.rollout.resources == {"rollout_pool": 1.0} and cfg.learner.resources == {"learner_pool": 0.5}
    assert load_config([])[0].rollout.resources == {}  # empty: any node
    for override, named in (("+rollout.resources.rollout_pool=0", "rollout.resources.rollout_pool"),
                            ("+learner.resources.GPU=1", "learner.resources")):
        with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
            load_config([override])


def test_the_smollm2_preset_trains_lora_adapters_and_scores_the_reply_s_last_number():
    cfg, _ = load_config(["experiment=smollm2_arith"])
    assert cfg.model_path == "smollm2" and cfg.learner.lora.rank == 16
    assert cfg.task.answer_format == "last_number" and "{a}" in cfg.task.prompt_template


PRESETS = sorted(p.stem for p in (Path(__file__).parents[2] / "configs" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_passes_the_validation_pass(preset):
    from launch.preflight import validate

    cfg, _ = validate([f"experiment={preset}"], local=False)
    assert cfg.total_steps >= 1


def test_every_key_a_not_read_rule_names_is_in_the_schema():
    from areal.config.applicability import RULES
    from areal.config.keys import config_keys

    keys = config_keys()
    for rule in RULES:
        for key in rule.keys:
            assert key.rstrip(".") in keys, key


def test_the_keys_table_carries_each_fields_docstring():
    from areal.config.keys import config_keys, nearest

    info = config_keys()["rollout.sync_every"]
    assert info.type == "int" and info.default == 1 and info.doc.startswith("Ship the learners' weights")
    assert config_keys()["rollout.resources"].open and not config_keys()["task.path"].open
    assert nearest("rollout.worker") == "rollout.workers" and nearest("algo.max_stalenes") == "algo.max_staleness"
