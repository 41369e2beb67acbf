"""The skip-counting task: answers whose lengths are long-tailed by nature, scored exactly."""

import random

import pytest

from rollouts.tasks.skip_count import SkipCountTask, terms_cdf


@pytest.fixture(scope="module")
def task():
    return SkipCountTask(seed=0, eval_size=200)


def test_reference_lists_every_non_negative_term():
    sample = SkipCountTask.problem(40, 7)
    assert sample.prompt == "40_down_by_7:"
    assert sample.reference == "40,33,26,19,12,5"
    assert SkipCountTask.problem(42, 7).reference == "42,35,28,21,14,7,0"  # zero is a term
    assert SkipCountTask.problem(5, 17).reference == "5"  # one term: the next would be negative


def test_score_is_exact_up_to_the_end_marker(task):
    sample = SkipCountTask.problem(40, 7)
    assert task.score("40,33,26,19,12,5", sample) == 1.0
    assert task.score("40,33,26,19,12,5\n<eos>", sample) == 1.0
    assert task.score(" 40,33,26,19,12,5 <eos>junk", sample) == 1.0
    assert task.score("40,33,26,19,12", sample) == 0.0  # stopped early
    assert task.score("40,33,26,19,12,5,-2", sample) == 0.0  # went past zero
    assert task.score("40,33,27,19,12,5", sample) == 0.0
    assert task.score("40, 33, 26, 19, 12, 5", sample) == 0.0


def test_number_of_terms_follows_the_truncated_power_law():
    cdf = terms_cdf(48, 1.2)
    assert cdf[-1] == pytest.approx(1.0)
    weights = [k ** -1.2 for k in range(1, 49)]
    assert cdf[0] == pytest.approx(weights[0] / sum(weights))
    assert terms_cdf(4, 0.0) == pytest.approx([0.25, 0.5, 0.75, 1.0])  # exponent 0: uniform


def test_answer_lengths_are_long_tailed(task):
    lengths = sorted(len(s.reference) for s in task.train)
    median, p99 = lengths[len(lengths) // 2], lengths[int(0.99 * len(lengths))]
    assert median < 20 and p99 > 150, (median, p99)
    assert lengths[-1] <= task.max_answer_chars
    # a synchronous batch of 16 prompts usually waits on an answer several times its median's length
    rng = random.Random(0)
    longest = sorted(max(len(s.reference) for s in rng.sample(task.train, 16)) for _ in range(200))
    assert longest[100] > 4 * median


def test_short_problems_are_not_thinned_out(task):
    """Few problems have one term, and repeats stay: the train split keeps the power law's short end."""
    one_term = sum(s.reference.count(",") == 0 for s in task.train) / len(task.train)
    assert one_term > 0.5 * terms_cdf(48, 1.2)[0]


def test_splits_are_disjoint_and_do_not_depend_on_eval_size(task):
    assert not {s.id for s in task.train} & {s.id for s in task.eval}
    smaller = SkipCountTask(seed=0, eval_size=50)
    assert [s.id for s in smaller.eval] == [s.id for s in task.eval[:50]]
    assert [s.id for s in smaller.train] == [s.id for s in task.train]
    assert [s.id for s in SkipCountTask(seed=1, eval_size=50).eval] != [s.id for s in smaller.eval]


def test_max_terms_bounds_the_answer():
    short = SkipCountTask(seed=0, eval_size=20, max_terms=3)
    assert max(s.reference.count(",") + 1 for s in short.train) == 3
    assert short.max_answer_chars == len("146,97,48")


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
    assert cfg.rollout.max_new_tokens > SkipCountTask(max_terms=48, eval_size=10).max_answer_chars  # room for EOS
    assert cfg.rollout.max_new_tokens < cfg.engine.max_model_len


@pytest.mark.parametrize("overrides, key, names", [
    (["experiment=arith_tiny", "task.max_terms=8"], "task.max_terms", "skip_count"),
    (["experiment=longtail_tiny", "task.prompt_template=count"], "task.prompt_template", "40_down_by_7:"),
    (["experiment=longtail_tiny", "task.max_operand=50"], "task.max_operand", "arithmetic"),
    (["experiment=longtail_tiny", "task.max_terms=0"], "task.max_terms", ">= 1"),
])
def test_keys_the_run_would_not_read_or_bad_values_are_refused(overrides, key, names):
    from launch.preflight import ConfigError, validate

    with pytest.raises((ConfigError, ValueError)) as refused:
        validate(overrides, local=False)
    assert key in str(refused.value) and names in str(refused.value)
