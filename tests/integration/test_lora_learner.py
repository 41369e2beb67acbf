"""LoRA in the LM learner: only adapters train, engines receive the merged model under the base names, and a
checkpoint resumes the adapters and their optimizer exactly. Float32 on the CPU (tight tolerances)."""

import pytest
import torch

from areal.batching import build_train_batch
from areal.config import AlgoConfig, LearnerConfig, LoraConfig
from areal.types import Trajectory, TrajectoryGroup

pytestmark = pytest.mark.slow
PROMPT = (5, 6, 7)


def lora_cfg(**lora) -> LearnerConfig:
    return LearnerConfig(lr=1e-2, minibatches=2, lora=LoraConfig(rank=4, alpha=8, **lora))


def make(path, cfg=None):
    from learners.deepspeed_setup import Rendezvous
    from learners.lm_learner import LMLearner

    return LMLearner(str(path), cfg or lora_cfg(), AlgoConfig(), temperature=1.0, rdv=Rendezvous(master_port=29653))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from launch.tiny_model import make_random_tiny_model

    return make_random_tiny_model(tmp_path_factory.mktemp("base"))


def batch():
    """Fixed off-policy data (behaviour log-probs made up), so two learners can be fed the same steps."""
    def traj(output, reward):
        return Trajectory(PROMPT, output, (-3.0,) * len(output), (0,) * len(output), reward)

    groups = [TrajectoryGroup(str(i), (traj((10, 11), 1.0), traj((12, 13), 0.0)), 0) for i in range(4)]
    return build_train_batch(groups, "grpo", pad_id=0)


def logits(model, ids=(5, 6, 7, 10, 11, 12)):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits.float()


def adapters(learner) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in learner.engine.module.named_parameters() if "lora_" in n}


def test_only_the_adapters_train_and_own_optimizer_state(base):
    learner = make(base)
    module = learner.engine.module
    frozen = {n: p.detach().clone() for n, p in module.named_parameters() if "lora_" not in n}
    trained = [p for group in learner.engine.optimizer.param_groups for p in group["params"]]
    assert trained and all(p.requires_grad for p in trained)
    assert {id(p) for p in trained} == {id(p) for n, p in module.named_parameters() if "lora_" in n}
    before = adapters(learner)
    learner.train_step(batch())
    assert all(torch.equal(p, frozen[n]) for n, p in module.named_parameters() if n in frozen)
    assert any(not torch.equal(p, before[n]) for n, p in adapters(learner).items())


def test_exported_buckets_are_the_merged_model_under_base_names_with_the_learners_logits(base, tmp_path):
    from safetensors.torch import load, load_file
    from transformers import AutoModelForCausalLM

    learner = make(base)
    for _ in range(3):
        learner.train_step(batch())
    manifest = learner.weights_manifest(bound_bytes=1 << 20, root=str(tmp_path), node_id="")
    exported = {}
    for path in manifest.paths():
        exported.update(load_file(path))
    reference = AutoModelForCausalLM.from_pretrained(base)
    # exactly the base model's (untied) tensors: no lora_ tensors, no .base_layer infix
    assert [n for b in manifest.buckets for n in b.names] == learner.export_names()  # in load order
    assert len(exported) == len(learner.export_names())
    assert set(exported) == set(reference.state_dict()) - {"lm_head.weight"}
    shipped = load(learner.weights_payload()["model.safetensors"])  # the files transport ships the same
    assert shipped.keys() == exported.keys() and all(torch.equal(shipped[k], exported[k]) for k in shipped)
    reference.load_state_dict(exported, strict=False)
    reference.tie_weights()
    learner.engine.module.eval()
    ours = logits(learner.engine.module)
    assert not torch.allclose(ours, logits(AutoModelForCausalLM.from_pretrained(base)), atol=1e-3)  # it moved
    assert torch.allclose(logits(reference), ours, atol=1e-5, rtol=0), (logits(reference) - ours).abs().max()


def test_saved_model_is_a_merged_hf_model_with_a_peft_adapter_beside_it(base, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    learner = make(base)
    learner.train_step(batch())
    saved = learner.save_model_atomic(tmp_path / "model")
    assert not list(saved.glob("adapter_*")) and (saved / "adapter" / "adapter_model.safetensors").is_file()
    merged = AutoModelForCausalLM.from_pretrained(saved)
    assert not any("lora_" in n or "base_layer" in n for n in merged.state_dict())
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), saved / "adapter")
    learner.engine.module.eval()
    ours = logits(learner.engine.module)
    assert torch.allclose(logits(merged), ours, atol=1e-5, rtol=0)
    assert torch.allclose(logits(adapted), ours, atol=1e-5, rtol=0)


def test_the_saved_model_and_adapter_render_a_chat_exactly_as_the_base_does(base, tmp_path):
    """A chat model's checkpoint keeps its chat template (transformers 5 writes it to chat_template.jinja) and
    every other file of the base's tokenizer, in the merged folder and in the adapter's, even once the folder
    the learner started from is gone."""
    import shutil

    from transformers import AutoTokenizer

    chat_base = tmp_path / "chat-base"
    shutil.copytree(base, chat_base)
    tokenizer = AutoTokenizer.from_pretrained(chat_base)
    tokenizer.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant]"
    tokenizer.save_pretrained(chat_base)
    assert (chat_base / "chat_template.jinja").is_file()
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    expected = AutoTokenizer.from_pretrained(chat_base).apply_chat_template(chat, tokenize=False)
    learner = make(chat_base)
    # a resumed run starts from a checkpoint's model/, which pruning may delete before the run saves again
    shutil.rmtree(chat_base)
    saved = learner.save_model_atomic(tmp_path / "model")
    for folder in (saved, saved / "adapter"):
        assert AutoTokenizer.from_pretrained(folder).apply_chat_template(chat, tokenize=False) == expected
    assert not (saved / "bootstrap.json").exists()


def test_a_checkpoint_resumes_the_adapters_and_their_optimizer_exactly(base, tmp_path):
    first = make(base)
    for _ in range(2):  # k steps, then the checkpoint
        first.train_step(batch())
    first.write_checkpoint_shard(tmp_path)
    for _ in range(2):  # m more
        first.train_step(batch())

    resumed = make(tmp_path / "model")  # what LearnerGroup does: the checkpoint's model/, then its learner/
    resumed.load_training_state(tmp_path)
    for _ in range(2):
        resumed.train_step(batch())
    ours, theirs = adapters(first), adapters(resumed)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[n], theirs[n]) for n in ours)
    assert resumed.version == first.version == 4


def test_lora_settings_that_cannot_apply_are_named(base):
    with pytest.raises(ValueError, match="learner.lora.rank"):
        make(base, lora_cfg(target_modules=["no_such_proj"]))
