"""The DeepSpeed LM learner: its logprobs are the model's, and a step moves the policy the right way.

It runs where the learner does in production: on cuda (in bf16) when present, else on the CPU (float32).
Inputs go to ``learner.device``; results are compared on the host in float32, with a bf16 tolerance on cuda."""

import pytest
import torch

from areal.batching import build_train_batch
from areal.config import AlgoConfig, LearnerConfig
from areal.types import Trajectory, TrajectoryGroup

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def learner(tmp_path_factory, device):
    from launch.tiny_model import make_random_tiny_model
    from learners.deepspeed_setup import Rendezvous
    from learners.lm_learner import LMLearner

    path = make_random_tiny_model(tmp_path_factory.mktemp("model"))
    learner = LMLearner(str(path), LearnerConfig(lr=1e-3, minibatches=2), AlgoConfig(), temperature=1.0,
                        rdv=Rendezvous(master_port=29651))
    assert learner.device.type == device.type
    return learner


def logprob_atol(learner) -> float:
    """Today's float32 tolerance on the CPU. On cuda the model is bf16 and two forward passes of the same
    tokens may take different kernels: bf16 against float32 moves this model's log-probs by 2e-3 (measured
    on the CPU), a wrong temperature (1 for 2) by 0.29."""
    return 1e-5 if learner.device.type == "cpu" else 2e-2


def groups_for(learner, good=(10, 11), bad=(12, 13)):
    """Two completions per prompt: ``good`` rewarded 1, ``bad`` 0; behaviour logprobs from the model itself."""
    from learners.lm_learner import token_logprobs

    prompt = (5, 6, 7)

    def traj(output, reward):
        ids = torch.tensor([prompt + output], device=learner.device)
        with torch.no_grad():
            lp = token_logprobs(learner.engine, ids, torch.ones_like(ids), 1.0)[0, len(prompt):]
        return Trajectory(prompt, output, tuple(lp.tolist()), (0,) * len(output), reward)

    return [TrajectoryGroup(str(i), (traj(good, 1.0), traj(bad, 0.0)), 0) for i in range(4)]


def sequence_logprob(learner, output):
    from learners.lm_learner import token_logprobs

    ids = torch.tensor([(5, 6, 7) + output], device=learner.device)
    with torch.no_grad():
        return token_logprobs(learner.engine, ids, torch.ones_like(ids), 1.0)[0, 3:].sum().item()


def test_token_logprobs_match_a_plain_forward_pass(learner):
    from learners.lm_learner import token_logprobs

    ids = torch.tensor([[5, 6, 7, 8, 9]], device=learner.device)
    with torch.no_grad():
        ours = token_logprobs(learner.engine, ids, torch.ones_like(ids), 2.0).cpu()
        logits = learner.engine.module(ids).logits[0, :-1].float().cpu() / 2.0
    expected = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None].cpu()).squeeze(-1)
    assert ours.dtype == torch.float32 and ours[0, 0] == 0
    assert torch.allclose(ours[0, 1:], expected, atol=logprob_atol(learner)), (ours[0, 1:] - expected).abs().max()


def test_train_steps_raise_the_rewarded_completion(learner):
    good, bad = (10, 11), (12, 13)
    before = sequence_logprob(learner, good) - sequence_logprob(learner, bad)
    for _ in range(3):
        stats = learner.train_step(build_train_batch(groups_for(learner, good, bad), "grpo", pad_id=0))
    after = sequence_logprob(learner, good) - sequence_logprob(learner, bad)
    assert after > before + 0.1
    assert learner.version >= 3
    assert stats["learner/tokens"] == 16.0
    assert stats["learner/behavior_weight_mean"] == pytest.approx(1.0, abs=0.05)  # on-policy behaviour


def test_weights_payload_is_a_loadable_hf_model(learner, tmp_path):
    from transformers import AutoModelForCausalLM

    files = learner.weights_payload()
    assert "model.safetensors" in files and "config.json" in files
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    ref = learner.engine.module.state_dict()
    for key, value in model.state_dict().items():
        # the payload holds the learner's dtype (bf16 on cuda), which a float32 load widens exactly
        assert torch.equal(value, ref[key].to("cpu", value.dtype)), key


def test_weights_manifest_buckets_hold_the_payloads_tensors_within_the_bound(learner, tmp_path):
    """The buckets transport exports what the files transport ships, cut into bounded buckets in load order."""
    from safetensors.torch import load, load_file

    manifest = learner.weights_manifest(bound_bytes=1 << 20, root=str(tmp_path), node_id="node-a")
    assert manifest.version == learner.version and manifest.node_id == "node-a" and len(manifest.buckets) > 1
    shipped = load(learner.weights_payload()["model.safetensors"])
    exported = {}
    for bucket, path in zip(manifest.buckets, manifest.paths()):
        tensors = load_file(path)
        assert set(tensors) == set(bucket.names)
        assert bucket.nbytes <= manifest.bound_bytes or len(bucket.names) == 1
        exported.update(tensors)
    assert [n for b in manifest.buckets for n in b.names] == learner.export_names()  # the state dict's order
    assert exported.keys() == shipped.keys() and "lm_head.weight" not in exported  # tied to the embedding
    assert all(torch.equal(exported[k], shipped[k]) for k in shipped)
