"""The skip-counting task: answers whose lengths are long-tailed by nature, scored exactly."""

import random

import pytest

from rollouts.tasks.skip_count import SkipCountTask, terms_cdf


@pytest.fixture(scope="module")
def task():
    return SkipCountTask(seed=0, eval_size=200)


def test_reference_lists_every_term_up_to_the_limit():
    sample = SkipCountTask.problem(12, 7, 40)
    assert sample.prompt == "12_by_7_to_40:"
    assert sample.reference == "12,19,26,33,40"
    assert SkipCountTask.problem(12, 7, 46).reference == "12,19,26,33,40"  # the limit need not be a term
    assert SkipCountTask.problem(66, 17, 78).reference == "66"  # one term: the next would pass the limit


def test_score_is_exact_up_to_the_end_marker(task):
    sample = SkipCountTask.problem(12, 7, 40)
    assert task.score("12,19,26,33,40", sample) == 1.0
    assert task.score("12,19,26,33,40\n<eos>", sample) == 1.0
    assert task.score(" 12,19,26,33,40 <eos>junk", sample) == 1.0
    assert task.score("12,19,26,33", sample) == 0.0  # stopped early
    assert task.score("12,19,26,33,40,47", sample) == 0.0  # went past the limit
    assert task.score("12,19,26,34,40", sample) == 0.0
    assert task.score("12, 19, 26, 33, 40", sample) == 0.0


def test_number_of_terms_follows_the_truncated_power_law():
    cdf = terms_cdf(64, 1.2)
    assert cdf[-1] == pytest.approx(1.0)
    weights = [k ** -1.2 for k in range(1, 65)]
    assert cdf[0] == pytest.approx(weights[0] / sum(weights))
    assert terms_cdf(4, 0.0) == pytest.approx([0.25, 0.5, 0.75, 1.0])  # exponent 0: uniform


def test_answer_lengths_are_long_tailed(task):
    lengths = sorted(len(s.reference) for s in task.train)
    median, p99 = lengths[len(lengths) // 2], lengths[int(0.99 * len(lengths))]
    assert median < 30 and p99 > 150, (median, p99)
    assert lengths[-1] <= task.max_answer_chars
    # a synchronous batch of 16 prompts usually waits on an answer several times its median's length
    rng = random.Random(0)
    longest = sorted(max(len(s.reference) for s in rng.sample(task.train, 16)) for _ in range(200))
    assert longest[100] > 4 * median


def test_splits_are_disjoint_and_do_not_depend_on_eval_size(task):
    assert not {s.id for s in task.train} & {s.id for s in task.eval}
    smaller = SkipCountTask(seed=0, eval_size=50)
    assert [s.id for s in smaller.eval] == [s.id for s in task.eval[:50]]
    assert [s.id for s in smaller.train] == [s.id for s in task.train]
    assert [s.id for s in SkipCountTask(seed=1, eval_size=50).eval] != [s.id for s in smaller.eval]


def test_max_terms_bounds_the_answer():
    short = SkipCountTask(seed=0, eval_size=20, max_terms=3)
    assert max(s.reference.count(",") + 1 for s in short.train) == 3
    assert short.max_answer_chars == len("99,118,137")


@pytest.mark.parametrize("kwargs, message", [(dict(max_terms=0), "max_terms"), (dict(exponent=-1), "exponent"),
                                             (dict(eval_size=10**6), "eval_size")])
def test_bad_settings_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SkipCountTask(**kwargs)


def test_the_preset_builds_the_task_from_its_keys():
    from launch.config_loader import load_config
    from rollouts.tasks.factory import make_task

    cfg, _ = load_config(["experiment=longtail_tiny", "task.max_terms=8", "task.terms_exponent=0"])
    task = make_task(cfg)
    assert isinstance(task, SkipCountTask) and (task.max_terms, task.exponent) == (8, 0.0)
    assert cfg.rollout.max_new_tokens > SkipCountTask(max_terms=64, eval_size=10).max_answer_chars  # room for EOS
    assert cfg.rollout.max_new_tokens < cfg.engine.max_model_len


@pytest.mark.parametrize("overrides, key, names", [
    (["experiment=arith_tiny", "task.max_terms=8"], "task.max_terms", "skip_count"),
    (["experiment=longtail_tiny", "task.prompt_template=count"], "task.prompt_template", "12_by_7_to_40:"),
    (["experiment=longtail_tiny", "task.max_operand=50"], "task.max_operand", "arithmetic"),
    (["experiment=longtail_tiny", "task.max_terms=0"], "task.max_terms", ">= 1"),
])
def test_keys_the_run_would_not_read_or_bad_values_are_refused(overrides, key, names):
    from launch.preflight import ConfigError, validate

    with pytest.raises((ConfigError, ValueError)) as refused:
        validate(overrides, local=False)
    assert key in str(refused.value) and names in str(refused.value)
