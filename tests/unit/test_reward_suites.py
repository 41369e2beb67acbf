"""Rewards of one's own, several at once: TRL-style (sync and async) and verl-style functions, weights, None,
and failures (raising, NaN, a non-number, a wrong count, too slow) kept with the completions that cause them;
all run in the reward processes."""

import asyncio
import math
import time

import pytest

from rollouts.reward_pool import RewardPool
from rollouts.rewards.base import RewardInput, RewardSettings, RewardState
from rollouts.rewards.suite import RewardConfigError, RewardSuite, metric_names, resolve_function
from rollouts.tasks.base import TaskSample

ROW = TaskSample("r:0", "2+2=", "4", columns={"prompt": "2+2=", "answer": "4", "level": 3,
                                               "data_source": "plain", "extra_info": {"bonus": 0.5}})
CHAT = TaskSample("c:0", ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}), "4",
                  columns={"answer": "4"})


def suites(**named):
    """RewardSuites by name from (entries, weights) pairs."""
    return {name: RewardSuite.from_entries(entries, weights, RewardSettings(max_new_tokens=8, overlong_buffer=2))
            for name, (entries, weights) in named.items()}


@pytest.fixture(scope="module")
def pool():
    rewards = suites(
        train=(["tests.reward_fns:exact", "think_format"], [2.0, 0.5]),
        kwargs=(["tests.reward_fns:echo_kwargs"], []),
        chat=(["tests.reward_fns:chat_shape", "tests.reward_fns:exact"], []),
        asynchronous=(["tests.reward_fns:async_exact"], []),
        none=(["tests.reward_fns:length_or_none", "tests.reward_fns:exact"], [1.0, 10.0]),
        picky=(["tests.reward_fns:picky", "tests.reward_fns:exact"], []),
        short=(["tests.reward_fns:short_list"], []),
        slow=(["tests.reward_fns:slow"], []),
        verl=(["verl:tests.reward_fns:verl_score"], []),
        overlong=(["soft_overlong"], []),
    )
    with RewardPool(rewards, workers=2, timeout_s=1.0, memory_mb=2048) as p:
        yield p


def score(pool, texts, sample=ROW, suite="train", state=None, ids=None):
    outputs = [RewardInput(t, tuple(range(len(t) if ids is None else ids)), "stop") for t in texts]
    return asyncio.run(pool.score_group(outputs, sample, suite, state))


def test_the_weighted_sum_of_several_rewards_and_each_component(pool):
    (right, wrong, formatted), _ = score(pool, ["4", "5", "<think>x</think>4"])
    assert right.value == 2.0 and wrong.value == 0.0 and formatted.value == 0.5  # "<think>..4" is not "4"
    assert dict(right.components) == {"exact": 1.0, "think_format": 0.0}
    assert dict(formatted.components) == {"exact": 0.0, "think_format": 1.0}


def test_trl_functions_get_every_column_the_ids_and_the_trainer_state(pool):
    (a, b), logged = score(pool, ["x", "yy"], suite="kwargs", state=RewardState(global_step=7, max_steps=9), ids=2)
    assert a.value == b.value == 7 + 20 + 300 and logged == {"seen": [2.0]}


def test_chat_prompts_reach_trl_functions_as_message_lists(pool):
    outcomes, _ = score(pool, ["4", "5"], sample=CHAT, suite="chat")
    assert [o.value for o in outcomes] == [2.0, 1.0]  # shape right for both; only "4" is the answer


def test_async_functions_are_awaited(pool):
    assert [o.value for o in score(pool, ["4", "3"], suite="asynchronous")[0]] == [1.0, 0.0]


def test_none_means_does_not_apply_and_counts_zero(pool):
    skipped, counted = score(pool, ["skip", "4"], suite="none")[0]
    assert skipped.ok and skipped.value == 0.0 and dict(skipped.components)["length_or_none"] is None
    assert counted.value == 1.0 + 10.0


def test_a_raising_batch_is_scored_one_by_one_so_only_the_culprit_fails(pool):
    boom, fine, nan, text = score(pool, ["boom", "4", "nan", "str"], suite="picky")[0]
    assert boom.status == "error" and "picky cannot read boom" in boom.detail and "'picky'" in boom.detail
    assert fine.ok and fine.value == 2.0
    assert nan.status == "nonfinite" and text.status == "error" and "returned str" in text.detail
    assert math.isnan(boom.value) and math.isnan(dict(boom.components)["picky"])
    assert dict(boom.components)["exact"] == 0.0  # the other reward still ran


def test_a_wrong_number_of_values_fails_the_group_naming_the_function(pool):
    outcomes, _ = score(pool, ["4", "4"], suite="short")
    assert all(o.status == "error" and "returned 1 values for 2 completions" in o.detail for o in outcomes)


def test_a_slow_reward_is_killed_at_its_deadline_and_the_pool_goes_on(pool):
    replaced, start = pool.replaced, time.perf_counter()
    outcomes, _ = score(pool, ["slow", "4"], suite="slow")
    assert 1.0 <= time.perf_counter() - start < 5.0
    assert all(o.status == "timeout" and "task.reward_timeout_s" in o.detail for o in outcomes)
    assert pool.replaced == replaced + 1
    assert [o.value for o in score(pool, ["4"], suite="slow")[0]] == [1.0]


def test_verl_functions_get_ground_truth_data_source_and_extra_info(pool):
    assert [o.value for o in score(pool, ["4", "5"], suite="verl")[0]] == [1.5, 0.5]
    as_dict = TaskSample("d", "q", "4", columns={"data_source": "dict"})
    assert [o.value for o in score(pool, ["4", "5"], sample=as_dict, suite="verl")[0]] == [1.0, 0.0]


def test_built_ins_read_the_completion_ids(pool):
    outcomes, _ = score(pool, ["a", "b", "c"], suite="overlong", ids=7)  # budget 8, buffer 2: 7 tokens is -0.5
    assert [o.value for o in outcomes] == [-0.5] * 3


def test_entries_resolve_from_a_file_path_and_name_what_is_wrong(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text("def accuracy(prompts, completions, **kw):\n    return [1.0] * len(completions)\n")
    monkeypatch.chdir(tmp_path)
    assert resolve_function("my_rewards.py:accuracy", "task.rewards")([], ["a"]) == [1.0]
    assert resolve_function("my_rewards:accuracy", "task.rewards")([], ["a"]) == [1.0]  # from the working directory
    with pytest.raises(RewardConfigError, match="cannot import 'no_such_module'"):
        resolve_function("no_such_module:f", "task.rewards")
    with pytest.raises(RewardConfigError, match="has no attribute 'missing'"):
        resolve_function("my_rewards.py:missing", "task.rewards")
    with pytest.raises(RewardConfigError, match="is not a file"):
        resolve_function("nowhere.py:f", "task.rewards")


def test_a_reward_that_does_not_resolve_stops_the_pool_at_start():
    bad = RewardSuite.from_entries(["tests.reward_fns:not_there"], [], RewardSettings())
    with pytest.raises(RuntimeError, match="not_there"):
        RewardPool({"train": bad}, workers=1, timeout_s=1.0, memory_mb=2048)


def test_metric_names_are_the_function_names_made_unique():
    assert metric_names(["math_verify", "pkg.mod:accuracy", "verl:a.b:accuracy", "x.py:fmt"]) == \
        ["math_verify", "accuracy", "accuracy_2", "fmt"]
