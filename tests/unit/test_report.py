"""`areal report`: plots and one HTML page from a run directory, finished or not."""

import json

import pytest

from launch.cli import main
from launch.report import PLOTS, read_jsonl, series, staleness_counts, write_report


def fake_run(path, steps=6, finished=True, torn=False, timed=True):
    """A run directory as the driver writes it (metrics.jsonl, timeline.jsonl, config.yaml, summary.json);
    ``timed``: rows carry time and elapsed_s (3 s per step after a 40 s start), as every run now writes them."""
    path.mkdir(parents=True, exist_ok=True)
    clock = (lambda s: {"time": 1_700_000_040.0 + 3 * s, "elapsed_s": 40.0 + 3 * s}) if timed else (lambda s: {})
    lines = [json.dumps({"step": 0, **clock(0), "eval/accuracy": 0.4})]
    for s in range(1, steps + 1):
        lines.append(json.dumps({
            "step": s, **clock(s), "rollout/reward_mean": 0.1 * s, "learner/loss": 1.0 / s,
            "learner/clip_fraction": 0.1, "learner/approx_kl": 1e-3, "rollout/tokens_per_s": 100.0 + s,
            "learner/tokens_per_s": 90.0,
            "weights/sync_seconds": 0.02, "staleness/hist_0": 2.0, "staleness/hist_1": float(s),
            "staleness/mean": 0.5, "learner/step_seconds": 2.0 + 0.1 * s, "learner/forward_backward_seconds": 1.5,
            "learner/gap_seconds_mean": 0.25, "rollout/engine_seconds_mean": 0.8}))
    text = "\n".join(lines) + "\n" + ('{"step": 7, "rollout/rew' if torn else "")
    (path / "metrics.jsonl").write_text(text)
    spans = [{"actor": "learner", "kind": "busy", "start": 10.0 + s, "end": 10.5 + s} for s in range(steps)]
    spans += [{"actor": "rollout-0", "kind": "busy", "start": 10.0, "end": 10.0 + steps},
              {"actor": "weights", "kind": "sync", "start": 11.0, "end": 11.1}]
    (path / "timeline.jsonl").write_text("\n".join(json.dumps(e) for e in spans) + "\n")
    (path / "config.yaml").write_text("batch_size: 4\n")
    if finished:
        (path / "summary.json").write_text(json.dumps({"eval_metric": "eval/accuracy", "initial_eval": 0.4,
                                                       "final_eval": 0.6, "steps": steps}))
    return path


def test_a_finished_run_gets_every_plot_and_a_page_naming_the_series(tmp_path):
    page = write_report(fake_run(tmp_path / "run"))
    assert page == tmp_path / "run" / "report" / "report.html"
    for name in PLOTS:
        png = tmp_path / "run" / "report" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = page.read_text()
    assert "state: <b>finished</b>" in text and text.count("data:image/png;base64,") == len(PLOTS)
    for series in ("rollout/reward_mean", "eval/accuracy", "rollout/tokens_per_s", "learner/tokens_per_s",
                   "weights/sync_seconds", "learner/loss", "staleness 1: 21", "rollout-0", "learner", "weights"):
        assert series in text


def test_a_running_or_crashed_run_is_reported_from_what_it_wrote(tmp_path):
    run = fake_run(tmp_path / "run", steps=3, finished=False, torn=True)
    assert len(read_jsonl(run / "metrics.jsonl")) == 4  # the torn last line is skipped
    text = write_report(run, tmp_path / "out").read_text()
    assert "running or stopped early" in text and "rollout/reward_mean" in text


def test_an_empty_run_directory_still_renders(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "no data yet" in write_report(tmp_path / "empty").read_text()


def test_staleness_counts_sum_the_histograms():
    assert staleness_counts([{"staleness/hist_0": 1.0, "staleness/hist_2": 3.0}, {"staleness/hist_2": 1.0}]) == \
        {0: 1.0, 2: 4.0}


def test_the_cli_writes_the_report_and_names_a_missing_run(tmp_path, capsys):
    run = fake_run(tmp_path / "run")
    assert main(["report", str(run), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "report.html").exists()
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_accuracy_and_reward_can_be_drawn_against_the_seconds_since_the_run_started(tmp_path):
    run = fake_run(tmp_path / "run", steps=3)
    rows = read_jsonl(run / "metrics.jsonl")
    assert series(rows, "eval/accuracy", x="time") == ([40.0], [0.4])
    assert series(rows, "rollout/reward_mean", x="time")[0] == [43.0, 46.0, 49.0]
    assert series(rows, "rollout/reward_mean")[0] == [1, 2, 3]  # by step, as before
    assert main(["report", str(run), "--x", "time"]) == 0
    text = (run / "report" / "report.html").read_text()
    assert "per-step plots against: seconds since the run started" in text and "rollout/reward_mean" in text


def test_drawing_against_time_needs_rows_that_carry_it(tmp_path, capsys):
    run = fake_run(tmp_path / "old", timed=False)  # written before rows carried elapsed_s
    assert main(["report", str(run), "--x", "time"]) == 2
    assert "use --x step" in capsys.readouterr().err
    assert main(["report", str(run)]) == 0


def test_the_page_breaks_a_step_down_into_where_its_time_went(tmp_path):
    from launch.report import step_time_breakdown

    rows = read_jsonl(fake_run(tmp_path / "run") / "metrics.jsonl")
    breakdown = step_time_breakdown(rows)
    assert breakdown["seconds between steps"] == 3.0
    assert breakdown["learner/step_seconds"] == pytest.approx(2.35)  # median of 2.1 ... 2.6
    assert breakdown["learner/forward_backward_seconds"] == 1.5 and breakdown["learner/gap_seconds_mean"] == 0.25
    assert "rollout/reward_seconds_mean" not in breakdown  # not measured: not shown
    text = write_report(tmp_path / "run").read_text()
    assert "step time: median seconds" in text and "learner/forward_backward_seconds" in text


def test_the_page_shows_held_out_metrics_reward_functions_lengths_and_what_the_model_wrote(tmp_path):
    run = fake_run(tmp_path / "run")
    with (run / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 6, "eval/accuracy": 0.5, "eval/pass@4": 0.75, "eval/hard/accuracy": 0.25,
                            "reward/math_verify": 0.4, "reward/think_format": 0.9,
                            "rollout/completion_tokens_mean": 40.0, "rollout/completion_tokens_max": 90.0}) + "\n")
    for step, text in ((2, "old"), (6, "<think>2+2</think> 4")):
        folder = run / "generations" / "eval"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"step-{step:06d}.jsonl").write_text(json.dumps(
            {"id": "a", "prompt": "2+2?", "reference": "4", "completion": text, "reward": 1.2, "correct": True,
             "rewards": {"math_verify": 1.0, "think_format": 1.0}}) + "\n")
    page = write_report(run).read_text()
    for key in ("eval/pass@4", "eval/hard/accuracy", "reward/think_format", "rollout/completion_tokens_max"):
        assert key in page
    assert "what the model wrote: eval (step-000006.jsonl)" in page and "&lt;think&gt;2+2&lt;/think&gt; 4" in page
    assert "old" not in page.split("what the model wrote")[1]
