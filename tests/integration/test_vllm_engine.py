"""VLLMEngine on the tiny model: logprobs, in-place weight updates and per-token version tags.

One engine serves the whole module (start-up costs ~30-50 s on 2 cores). Every test that
changes the weights loads the original ones back before it returns, so tests stay independent.
"""

import asyncio
import importlib.util
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed"),
]

PROMPTS = [[5 + i, 40 + 3 * i, 60 + i, 70 - i, 33 + 2 * i, 50, 51 + i, 9] for i in range(8)]
LONG = 200  # tokens per request in the in-flight test; prompt + LONG fits max_model_len=256


@pytest.fixture(scope="module")
def loop():
    # pytest-asyncio is not installed: one loop for the module, since the engine's output
    # handler task and locks live on the loop that first used them.
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def models():
    """Original and perturbed weights of the tiny model, saved on tmpfs, with HF copies."""
    from transformers import AutoModelForCausalLM

    from launch.tiny_model import build_char_tokenizer, make_random_tiny_model

    root = Path(tempfile.mkdtemp(prefix="vllm_engine_test_", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    base_dir = make_random_tiny_model(root / "base")
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    perturbed = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in perturbed.parameters():  # embeddings too: the LM head is tied to them
            p.add_(torch.randn(p.shape, generator=gen) * p.std().clamp_min(1e-2))
    perturbed_dir = root / "perturbed"
    perturbed.save_pretrained(perturbed_dir, safe_serialization=True)
    build_char_tokenizer().save_pretrained(perturbed_dir)
    yield {"base_dir": str(base_dir), "perturbed_dir": str(perturbed_dir), "base": base, "perturbed": perturbed}
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def engine(loop, models):
    from areal.config.engine import EngineConfig
    from rollouts.engines.vllm_engine import VLLMEngine

    async def start():
        return VLLMEngine(EngineConfig(kv_cache_gb=0.25, max_model_len=256), models["base_dir"])

    t0 = time.perf_counter()
    eng = loop.run_until_complete(start())
    t1 = time.perf_counter()
    # The first request warms the engine up (and the first pause is slow before one).
    loop.run_until_complete(eng.generate(PROMPTS[0], greedy(4)))
    print(f"\nVLLMEngine start {t1 - t0:.1f} s, first request {time.perf_counter() - t1:.1f} s")
    yield eng
    loop.run_until_complete(eng.close())


def greedy(max_new_tokens):
    from rollouts.engines.base import SamplingConfig

    return SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)


def hf_logprobs(model, prompt, tokens, temperature=1.0):
    """[len(tokens), V] log-softmax of logits / T at the positions that predicted ``tokens``."""
    ids = torch.tensor([list(prompt) + list(tokens)])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float()
    return torch.log_softmax(logits / temperature, dim=-1)


def token_logprobs(table, tokens):
    return table.gather(1, torch.tensor(tokens).unsqueeze(1)).squeeze(1)


def generate_all(loop, engine, prompts, sampling):
    async def run():
        return await asyncio.gather(*[engine.generate(p, sampling) for p in prompts])

    return [outs[0] for outs in loop.run_until_complete(run())]


def update(loop, engine, weights_dir, version):
    seconds = loop.run_until_complete(engine.update_weights(weights_dir, version))
    print(f"\nupdate_weights -> v{version}: {seconds:.3f} s")
    return seconds


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_match_transformers(loop, engine, models, temperature):
    from rollouts.engines.base import SamplingConfig

    sampling = SamplingConfig(max_new_tokens=24, temperature=temperature, seed=123)
    completions = loop.run_until_complete(engine.generate(PROMPTS[1], sampling, n=4))
    for c in completions:
        assert len(c.token_ids) == len(c.logprobs) == len(c.versions) > 0
        assert set(c.versions) == {engine.version}
        table = hf_logprobs(models["base"], PROMPTS[1], c.token_ids, temperature)
        ref = token_logprobs(table, c.token_ids)
        got = torch.tensor(c.logprobs)
        assert torch.allclose(got, ref, atol=1e-3), (got - ref).abs().max()
        if temperature != 1.0:  # the check can tell the sampling distribution from the raw one
            raw = token_logprobs(hf_logprobs(models["base"], PROMPTS[1], c.token_ids), c.token_ids)
            assert (got - raw).abs().max() > 1e-2


def test_update_changes_greedy_output_and_restoring_brings_it_back(loop, engine, models):
    prompts = PROMPTS[:4]
    before = generate_all(loop, engine, prompts, greedy(32))
    v0 = engine.version
    try:
        update(loop, engine, models["perturbed_dir"], v0 + 1)
        assert engine.version == v0 + 1
        changed = generate_all(loop, engine, prompts, greedy(32))
        assert any(a.token_ids != b.token_ids for a, b in zip(before, changed))
        for prompt, c in zip(prompts, changed):
            assert set(c.versions) == {v0 + 1}
            # All weights moved, tied LM head included: logprobs follow the new model exactly.
            ref = token_logprobs(hf_logprobs(models["perturbed"], prompt, c.token_ids), c.token_ids)
            assert torch.allclose(torch.tensor(c.logprobs), ref, atol=1e-3)
    finally:
        update(loop, engine, models["base_dir"], v0 + 2)
    restored = generate_all(loop, engine, prompts, greedy(32))
    assert [c.token_ids for c in restored] == [c.token_ids for c in before]
    assert all(set(c.versions) == {v0 + 2} for c in restored)


def update_in_flight(loop, engine, models, min_old=16):
    """Greedy LONG-token requests for every prompt, with the perturbed weights loaded once each has
    ``min_old`` tokens; the base weights are restored after. Returns (completions, references under the
    base weights, old version, new version)."""
    reference = generate_all(loop, engine, PROMPTS, greedy(LONG))  # what the old weights produce
    v_old = engine.version
    v_new = v_old + 1

    async def run():
        tasks = [asyncio.ensure_future(engine.generate(p, greedy(LONG))) for p in PROMPTS]
        # Update once every request has some tokens: peeking at vLLM's per-request state is
        # the only progress signal, since the engine returns each request once, at its end.
        states = engine._llm.output_processor.request_states
        while len(states) < len(PROMPTS) or min(s.detokenizer.num_output_tokens() for s in states.values()) < min_old:
            assert not any(t.done() for t in tasks), "a request finished before the update"
            await asyncio.sleep(0.002)
        seconds = await engine.update_weights(models["perturbed_dir"], v_new)
        return [(await t)[0] for t in tasks], seconds

    try:
        completions, seconds = loop.run_until_complete(run())
        print(f"\nupdate_weights with {len(PROMPTS)} requests in flight: {seconds:.3f} s")
    finally:
        update(loop, engine, models["base_dir"], v_new + 1)
    return completions, reference, v_old, v_new


def split_at_update(models, prompt, ref, c, v_old, v_new, min_old=16):
    """Checks what holds either way; returns (tokens drawn by the old weights, the completion's logprobs,
    logprobs of the base and of the perturbed model recomputed over the whole sequence)."""
    assert len(c.token_ids) == LONG and c.finish_reason == "length"
    n_old = c.versions.count(v_old)
    assert c.versions == (v_old,) * n_old + (v_new,) * (LONG - n_old), c.versions
    assert min_old <= n_old < LONG
    assert c.token_ids[:n_old] == ref.token_ids[:n_old]
    old_lp = token_logprobs(hf_logprobs(models["base"], prompt, c.token_ids), c.token_ids)
    new_lp = token_logprobs(hf_logprobs(models["perturbed"], prompt, c.token_ids), c.token_ids)
    got = torch.tensor(c.logprobs)
    assert torch.allclose(got[:n_old], old_lp[:n_old], atol=1e-3)
    return n_old, got, old_lp, new_lp


def test_in_flight_requests_carry_old_then_new_version_tags(loop, engine, models):
    completions, reference, v_old, v_new = update_in_flight(loop, engine, models)
    for prompt, ref, c in zip(PROMPTS, reference, completions):
        n_old, got, old_lp, new_lp = split_at_update(models, prompt, ref, c, v_old, v_new)
        # Each token's logprob must match the weights its tag names, right up to the boundary (the KV
        # cache was recomputed with the new weights), and the last old / first new token must not
        # match the other weights.
        assert torch.allclose(got[n_old:], new_lp[n_old:], atol=1e-3)
        assert abs(got[n_old - 1] - new_lp[n_old - 1]) > 1e-2
        assert abs(got[n_old] - old_lp[n_old]) > 1e-2


def test_with_kv_on_update_keep_new_tokens_attend_to_keys_and_values_of_the_old_weights(loop, engine, models):
    """engine.kv_on_update=keep: no re-prefill at an update. Tags and the old part are as with recompute;
    after the boundary the new weights draw over the old weights' KV cache, so the logprobs are neither
    model's recomputation over the whole sequence (they are still those of the distribution sampled)."""
    engine._clear_kv_on_update = False  # what EngineConfig(kv_on_update="keep") sets
    try:
        completions, reference, v_old, v_new = update_in_flight(loop, engine, models)
    finally:
        engine._clear_kv_on_update = True
    for prompt, ref, c in zip(PROMPTS, reference, completions):
        n_old, got, old_lp, new_lp = split_at_update(models, prompt, ref, c, v_old, v_new)
        assert abs(got[n_old] - new_lp[n_old]) > 1e-2
        assert abs(got[n_old] - old_lp[n_old]) > 1e-2


def test_texts_decoded_once_per_completion_equal_vllms_incremental_detokenizer(loop, engine):
    """Without stop strings the engine skips vLLM's per-step detokenizer and decodes each completion at its
    end; a stop string that never occurs turns the detokenizer on: same tokens, same texts."""
    from rollouts.engines.base import SamplingConfig

    plain = SamplingConfig(max_new_tokens=24, temperature=1.0, seed=11)
    with_stop = SamplingConfig(max_new_tokens=24, temperature=1.0, seed=11, stop=("never-said",))
    a = loop.run_until_complete(engine.generate(PROMPTS[4], plain, n=6))
    b = loop.run_until_complete(engine.generate(PROMPTS[4], with_stop, n=6))
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    assert [c.text for c in a] == [c.text for c in b]
    assert any(c.text for c in a)


def test_seeded_requests_survive_an_update_whose_recompute_exceeds_one_step_of_the_default_budget(loop, engine,
                                                                                                  models):
    """8 seeded requests of 8 samples, 100+ tokens each, in flight: after the update they recompute ~7,000
    tokens of KV cache. Split across steps (vLLM's default budget is 2,048), vLLM winds back their CPU
    generators and the engine core dies; the engine's step budget keeps every recompute whole."""
    from rollouts.engines.base import SamplingConfig

    async def run():
        sampling = [SamplingConfig(max_new_tokens=LONG, forced_new_tokens=LONG, temperature=1.0, seed=i)
                    for i in range(8)]
        tasks = [asyncio.ensure_future(engine.generate(p, s, n=8)) for p, s in zip(PROMPTS, sampling)]
        states = engine._llm.output_processor.request_states
        while len(states) < 8 * 8 or min(s.detokenizer.num_output_tokens() for s in states.values()) < 100:
            assert not any(t.done() for t in tasks), "a request finished before the update"
            await asyncio.sleep(0.002)
        await engine.update_weights(models["perturbed_dir"], engine.version + 1)
        return await asyncio.gather(*tasks)

    try:
        groups = loop.run_until_complete(run())
    finally:
        update(loop, engine, models["base_dir"], engine.version + 1)
    assert all(len(c.token_ids) == LONG for group in groups for c in group)

def test_n_samples_come_back_as_n_completions(loop, engine):
    from rollouts.engines.base import SamplingConfig

    completions = loop.run_until_complete(
        engine.generate(PROMPTS[2], SamplingConfig(max_new_tokens=16, temperature=1.0, seed=7), n=5)
    )
    assert len(completions) == 5
    for c in completions:
        assert 0 < len(c.token_ids) <= 16
        assert len(c.logprobs) == len(c.versions) == len(c.token_ids)
        assert c.finish_reason in ("length", "stop")
    assert len({c.token_ids for c in completions}) > 1  # independent samples, not copies
    assert len(loop.run_until_complete(engine.generate(PROMPTS[2], greedy(4), n=1))) == 1



def test_a_forced_length_runs_past_eos_and_the_text_ends_where_the_answer_did(loop, engine, models):
    """Benchmarks force long-tailed lengths; the filler after EOS must not reach the reward (banning EOS
    instead made the model write on where its answer ended)."""
    from transformers import AutoTokenizer

    from rollouts.engines.base import SamplingConfig

    tokenizer = AutoTokenizer.from_pretrained(models["base_dir"])
    eos = tokenizer.eos_token_id
    sampling = SamplingConfig(max_new_tokens=40, forced_new_tokens=30, temperature=1.0, seed=3)
    for c in loop.run_until_complete(engine.generate(PROMPTS[3], sampling, n=4)):
        assert len(c.token_ids) == len(c.logprobs) == 30
        end = c.token_ids.index(eos) if eos in c.token_ids else 30
        assert c.text == tokenizer.decode(list(c.token_ids[:end]), skip_special_tokens=True)
    answer = tuple(tokenizer.encode("32", add_special_tokens=False))
    assert engine._text_before_eos(answer + (eos,) + answer) == "32"

def test_concurrent_updates_are_serialised(loop, engine, models):
    before = generate_all(loop, engine, PROMPTS[:2], greedy(16))
    v = engine.version

    async def run():
        return await asyncio.gather(
            engine.update_weights(models["perturbed_dir"], v + 1), engine.update_weights(models["base_dir"], v + 2)
        )

    loop.run_until_complete(run())
    assert engine.version == v + 2  # the lock is FIFO: the second call ran last
    after = generate_all(loop, engine, PROMPTS[:2], greedy(16))
    assert [c.token_ids for c in after] == [c.token_ids for c in before]


def test_failed_updates_raise_naming_directory_and_version(loop, engine, models, tmp_path):
    v = engine.version
    missing = tmp_path / "missing"
    with pytest.raises(FileNotFoundError, match=f"version={v + 1}.*{missing}"):
        loop.run_until_complete(engine.update_weights(str(missing), v + 1))
    assert engine.version == v
    # A folder with a corrupt checkpoint fails inside vLLM; the error must still surface.
    broken = tmp_path / "broken"
    shutil.copytree(models["base_dir"], broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(RuntimeError, match=f"{broken}.*version {v + 1}"):
        loop.run_until_complete(engine.update_weights(str(broken), v + 1))
    assert engine.version == v
    # The engine stayed paused; a good update resumes it.
    update(loop, engine, models["base_dir"], v + 2)
    assert len(generate_all(loop, engine, PROMPTS[:1], greedy(8))[0].token_ids) == 8


# -- bucketed reloads (rollout.weight_transport=buckets) -----------------------------------------------------------
def export_buckets(model, root, version, bound_bytes=1 << 20):
    """``model``'s weights as the learner exports them: 1 MiB buckets (the tiny model makes several)."""
    from types import SimpleNamespace

    from learners.deepspeed_setup import partial_state_dict, state_sizes
    from learners.lm_learner import untied_names
    from learners.weight_export import BucketExporter

    holder = SimpleNamespace(module=model)
    sizes = state_sizes(holder, 0)
    exporter = BucketExporter(bound_bytes, root=root)
    manifest = exporter.export(version, [(n, sizes[n]) for n in untied_names(model)],
                               lambda names: partial_state_dict(holder, 0, names))
    return exporter, manifest


def outputs(completions):
    return [(c.token_ids, c.logprobs) for c in completions]


def test_a_bucketed_reload_gives_exactly_the_outputs_of_a_full_file_reload(loop, engine, models, tmp_path):
    """In place (engine on the learner's node) and staged (another node: fetched, staged, deleted once read)."""
    from rollouts.worker import RolloutWorker

    prompts, v0 = PROMPTS[:4], engine.version
    exporter, manifest = export_buckets(models["perturbed"], tmp_path / "learner", v0 + 2)
    assert len(manifest.buckets) > 3
    worker = RolloutWorker(engine, None, tmp_path / "staging")

    async def fetch(index):
        return Path(manifest.paths()[index]).read_bytes()

    try:
        update(loop, engine, models["perturbed_dir"], v0 + 1)
        from_files = outputs(generate_all(loop, engine, prompts, greedy(32)))
        loop.run_until_complete(worker.load_weights(manifest, v0 + 2))
        print(f"\nbucketed update ({len(manifest.buckets)} buckets): {engine.last_update}")
        in_place = generate_all(loop, engine, prompts, greedy(32))
        assert all(set(c.versions) == {v0 + 2} for c in in_place)
        loop.run_until_complete(worker.load_weights(manifest, v0 + 2, fetch, wait_s=60))
        staged = outputs(generate_all(loop, engine, prompts, greedy(32)))
    finally:
        update(loop, engine, models["base_dir"], v0 + 3)
        exporter.remove()
    assert outputs(in_place) == from_files and staged == from_files  # same tokens, same log-probs, bit for bit
    assert list((tmp_path / "staging").iterdir()) == []


def test_a_missing_bucket_leaves_the_engine_paused_with_a_clear_error_until_a_good_update(loop, engine, models,
                                                                                         tmp_path):
    from rollouts.engines.base import BucketFeed

    before = outputs(generate_all(loop, engine, PROMPTS[:2], greedy(16)))
    v = engine.version
    exporter, manifest = export_buckets(models["perturbed"], tmp_path, v + 1)
    try:
        # bucket 3 vanishes after buckets 1-2 loaded: some layers hold new weights, some none
        Path(manifest.paths()[2]).unlink()
        feed = BucketFeed(manifest.paths(), tuple(b.names for b in manifest.buckets), v + 1)
        with pytest.raises(RuntimeError, match=rf"bucket 3 of {len(manifest.buckets)} of version {v + 1} is missing"
                                               r".*stays paused"):
            loop.run_until_complete(engine.update_weights(feed, v + 1))
        assert engine.version == v
        assert loop.run_until_complete(engine._llm.is_paused())
    finally:
        update(loop, engine, models["base_dir"], v + 2)  # a complete update resumes it, with no stale partial layer
        exporter.remove()
    assert outputs(generate_all(loop, engine, PROMPTS[:2], greedy(16))) == before
