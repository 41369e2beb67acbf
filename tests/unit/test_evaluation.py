"""Held-out evaluation: pass@k against hand-computed values, the metrics of a set, and the driver's evaluation
of several named sets with their generations written to the run directory."""

import json
import math
from dataclasses import dataclass, field

import pytest

from areal.config import TaskConfig, TrainConfig
from areal.config.eval_sets import EvalSetConfig
from areal.evaluation import EvalRecord, EvalSample, pass_at_k, pass_ks, summarize
from rollouts.tasks.base import TaskSample


@pytest.mark.parametrize("n, c, k, expected", [
    (5, 0, 1, 0.0), (5, 5, 3, 1.0), (5, 1, 1, 1 / 5), (5, 2, 2, 1 - 3 / 10),  # C(3,2)/C(5,2) = 3/10
    (4, 1, 2, 1 - 3 / 6), (10, 3, 5, 1 - 21 / 252), (4, 2, 3, 1.0),  # n - c < k: every draw of 3 holds a correct one
])
def test_pass_at_k_is_the_unbiased_estimator(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_refuses_impossible_counts():
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_pass_at_one_is_the_fraction_correct_and_the_reported_ks():
    assert all(pass_at_k(8, c, 1) == pytest.approx(c / 8) for c in range(9))
    assert pass_ks(8) == [1, 2, 4, 8] and pass_ks(6) == [1, 2, 4, 6] and pass_ks(1) == [1] and pass_ks(0) == []


def sample(reward, components=(), status="ok", tokens=3, finish="stop"):
    return EvalSample("text", reward if status == "ok" else math.nan, status, "why" if status != "ok" else "",
                      components, tokens, finish)


def test_summary_of_a_set_with_a_verifier_and_k_samples():
    comps = lambda v, f: (("math_verify", v), ("think_format", f))  # noqa: E731
    records = [
        EvalRecord("a", "p", "r", sample(1.2, comps(1.0, 0.2)), (sample(1.0, comps(1.0, 0.0)), sample(0.0, comps(0.0, 0.0)))),
        EvalRecord("b", "p", "r", sample(0.2, comps(0.0, 1.0), tokens=9, finish="length"),
                   (sample(0.0, comps(0.0, 0.0)), sample(math.nan, status="timeout"))),
        EvalRecord("c", "p", "r", sample(math.nan, status="error"), (sample(1.0, comps(1.0, 0.0)),) * 2),
    ]
    out = summarize(records, threshold=1.0, k=2)
    assert out["accuracy"] == 0.5 and out["failures"] == 1.0  # a correct, b wrong, c's reward failed
    assert out["reward"] == pytest.approx(0.7) and out["reward/think_format"] == pytest.approx(0.6)
    assert out["length_mean"] == 5.0 and out["truncated"] == pytest.approx(1 / 3)
    # pass@1 over the ok samples: a 1/2, b 0/1, c 2/2; pass@2 only where 2 ok samples exist: a 1.0, c 1.0
    assert out["pass@1"] == pytest.approx((0.5 + 0 + 1) / 3) and out["pass@2"] == 1.0
    assert out["mean@2"] == pytest.approx((0.5 + 0 + 1) / 3)


def test_summary_without_a_verifier_is_the_mean_reward():
    out = summarize([EvalRecord("a", "p", "", sample(-1.5)), EvalRecord("b", "p", "", sample(-0.5))], threshold=None)
    assert out == {"reward": -1.0, "failures": 0.0, "length_mean": 3.0, "truncated": 0.0}


@dataclass
class FakeFleet:
    """Held-out records as rollout workers return them, per set."""

    results: dict
    calls: list = field(default_factory=list)

    def evaluate(self, samples, suite, k, payload, version):
        self.calls.append((suite, len(samples), k))
        return self.results[suite]


class FakeDriverState:
    """The parts of a Driver its ``evaluate`` reads."""

    def __init__(self, results, tmp_path, cfg):
        self.fleet, self.cfg = FakeFleet(results), cfg
        sets = {name: [TaskSample(r.sample_id, "p", "") for r in records] for name, records in results.items()}
        self.task = type("Task", (), {"eval_sets": sets})()
        self.payload, self.published, self.version = None, 3, 3
        self.out_dir, self.eval_plan = tmp_path, cfg.task.eval_plan()


def test_the_driver_evaluates_every_set_and_writes_what_the_model_wrote(tmp_path):
    from actors.driver import Driver

    cfg = TrainConfig(task=TaskConfig(type="dataset", path="x.parquet", rewards=["math_verify"], eval_k=2,
                                      eval_sets=[EvalSetConfig(name="hard", path="h.parquet", k=0)]))
    failed = sample(math.nan, status="timeout")
    results = {"eval": [EvalRecord("a", "p", "1", sample(1.0), (sample(1.0), sample(0.0))),
                        EvalRecord("b", "p", "2", failed, (sample(0.0), sample(0.0))),
                        EvalRecord("c", "p", "3", sample(0.0), (sample(1.0), sample(1.0)))],
               "hard": [EvalRecord("h", "q", "9", sample(0.0))]}
    state = FakeDriverState(results, tmp_path, cfg)
    metrics, outputs = Driver.evaluate(state)
    assert state.fleet.calls == [("eval", 3, 2), ("hard", 1, 0)]
    assert metrics["eval/accuracy"] == 0.5 and metrics["eval/failures"] == 1.0 and metrics["eval/pass@2"] == 2 / 3
    assert metrics["eval/hard/accuracy"] == 0.0 and "eval/hard/pass@2" not in metrics and metrics["eval/seconds"] >= 0
    assert outputs == ["text"] * 3
    rows = [json.loads(line) for line in (tmp_path / "generations" / "eval" / "step-000003.jsonl").open()]
    assert [r["id"] for r in rows] == ["a", "b", "c"] and rows[0]["correct"] and rows[0]["reference"] == "1"
    assert rows[1]["failure"] == "timeout: why" and len(rows[2]["samples"]) == 2
    assert (tmp_path / "generations" / "hard" / "step-000003.jsonl").exists()


def test_the_console_line_of_a_set():
    from areal.evaluation import describe_set

    metrics = {"eval/hard/accuracy": 0.25, "eval/hard/pass@4": 0.5, "eval/hard/length_mean": 41.2,
               "eval/hard/truncated": 0.05, "eval/hard/failures": 2.0}
    assert describe_set("hard", metrics, 4) == "hard: accuracy 0.250 (pass@4 0.500, 41 tokens, 5% truncated, 2 failed)"
    assert describe_set("eval", {"eval/reward": -1.25, "eval/failures": 0.0}, 0) == "reward -1.250"
