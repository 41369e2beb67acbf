"""The console of a run: by default one progress line and rare milestones reach the terminal, everything
else goes to RUN_DIR/logs; logging.verbose=true brings every line back."""

import logging
import warnings

import pytest

from actors.milestones import MILESTONE
from actors.process_env import worker_env
from launch.config_loader import load_config
from launch.console import RateLimiter, close_console, link_worker_logs, setup_console


@pytest.fixture
def run_console(tmp_path):
    """``setup_console`` for a run in tmp_path/run with the given verbosity; undone after the test."""
    def start(verbose: bool):
        return setup_console(tmp_path / "run", verbose)

    yield start
    close_console()


def chatter() -> None:
    """What libraries print in the driver process of a run."""
    logging.getLogger("transformers.modeling_utils").warning("Some weights of the checkpoint were not used")
    logging.getLogger("vllm.model_executor").warning("RotaryEmbedding: Failed to load weights")
    logging.getLogger("deepspeed").info("Writing model shards")
    logging.getLogger("ray").info("Started a local Ray instance")
    logging.getLogger("actors.driver").info("balancer: steady (in-flight limit 16, workers +0)")
    logging.getLogger("actors.driver").debug("a detail for whoever debugs the driver")
    warnings.warn("a library's FutureWarning about its own API", FutureWarning, stacklevel=1)


def milestones() -> None:
    """What a person watching the run needs to see."""
    logging.getLogger("actors.driver").info("step 10: held-out eval/accuracy 0.610", extra=MILESTONE)
    logging.getLogger("actors.driver").info("checkpoint runs/x/checkpoints/step-00000020 (0.4s)", extra=MILESTONE)
    logging.getLogger("actors.rollout_fleet").error("RolloutActor 0 failed (killed); 3 rollouts requeued")
    logging.getLogger("actors.rollout_fleet").warning("started RolloutActor 1 to replace RolloutActor 0")
    logging.getLogger("ray").error("the GCS is unreachable")


def test_by_default_library_chatter_stays_off_the_terminal_and_lands_in_driver_log(run_console, capsys):
    console = run_console(verbose=False)
    chatter()
    close_console()
    terminal = capsys.readouterr().err
    for line in ("weights of the checkpoint", "Writing model shards", "Failed to load weights",
                 "Started a local Ray instance", "balancer", "a detail", "FutureWarning"):
        assert line not in terminal
    kept = console.log_path.read_text()
    for line in ("weights of the checkpoint", "Writing model shards", "Failed to load weights",
                 "Started a local Ray instance", "balancer", "a detail", "FutureWarning"):
        assert line in kept


def test_milestones_failures_and_errors_reach_the_quiet_terminal(run_console, capsys):
    console = run_console(verbose=False)
    milestones()
    close_console()
    terminal = capsys.readouterr().err
    assert f"full log: {console.log_path}" in terminal  # the start says where everything else went
    for line in ("held-out eval/accuracy 0.610", "checkpoint runs/x/checkpoints/step-00000020",
                 "ERROR actors.rollout_fleet: RolloutActor 0 failed", "started RolloutActor 1 to replace",
                 "ERROR ray: the GCS is unreachable"):
        assert line in terminal
    assert len(terminal.splitlines()) == 7  # the two start lines and the five above, nothing else


def test_verbose_brings_every_line_back(run_console, capsys):
    run_console(verbose=True)
    chatter()
    milestones()
    close_console()
    terminal = capsys.readouterr().err
    for line in ("weights of the checkpoint", "Writing model shards", "Failed to load weights",
                 "Started a local Ray instance", "balancer", "FutureWarning", "held-out eval/accuracy 0.610",
                 "RolloutActor 0 failed"):
        assert line in terminal
    assert "a detail" not in terminal  # DEBUG stays in driver.log


def test_a_repeated_warning_shows_once_and_says_how_many_were_held_back(run_console, capsys):
    console = run_console(verbose=False)
    fleet = logging.getLogger("actors.driver")
    for group in range(20):
        fleet.warning("%s: reward failures in group %s: %s", "RolloutActor 0", group, "timeout after 10s")
    close_console()
    terminal = capsys.readouterr().err
    assert terminal.count("reward failures in group") == 2  # the first, and the closing tally
    assert "reward failures in group 0" in terminal and "19 more like" in terminal
    assert console.log_path.read_text().count("reward failures in group") == 20


def test_a_long_error_takes_one_line_on_the_terminal_and_stays_whole_in_driver_log(run_console, capsys):
    console = run_console(verbose=False)
    logging.getLogger("actors.rollout_fleet").error(
        "RolloutActor 0 failed (run_group(ticket 209) raised: The actor died unexpectedly.\n\tpid: 21940\n"
        "The actor is dead because its worker process has died.); 1 rollouts requeued")
    close_console()
    terminal = capsys.readouterr().err.splitlines()
    assert terminal[-1].endswith(f"RolloutActor 0 failed (run_group(ticket 209) raised: The actor died unexpectedly."
                                 f" [...] (whole message in {console.log_path})")
    assert "1 rollouts requeued" in console.log_path.read_text()


def test_the_rate_limit_lets_one_per_interval_through_and_counts_the_rest():
    limiter = RateLimiter(interval=30.0)
    kind = ("actors.driver", "%s: reward failures in group %s: %s")
    assert limiter.admit(kind, 0.0, "group 1") == 0
    assert limiter.admit(kind, 1.0, "group 2") is None
    assert limiter.admit(kind, 2.0, "group 3") is None
    assert limiter.admit(("actors.driver", "another kind"), 3.0, "x") == 0
    assert limiter.admit(kind, 31.0, "group 4") == 2
    assert limiter.drain() == []


def test_closing_the_console_restores_the_logging_it_found(tmp_path):
    ray_logger, root = logging.getLogger("ray"), logging.getLogger()
    before = (list(root.handlers), root.level, list(ray_logger.handlers), ray_logger.propagate,
              logging.getLogger("actors").level)
    setup_console(tmp_path, verbose=False)
    setup_console(tmp_path, verbose=False)  # a second run in the same process replaces the first set-up
    close_console()
    assert before == (list(root.handlers), root.level, list(ray_logger.handlers), ray_logger.propagate,
                      logging.getLogger("actors").level)


def test_run_dir_logs_ray_links_the_workers_log_files(tmp_path):
    session = tmp_path / "session_2026"
    (session / "logs").mkdir(parents=True)
    (session / "logs" / "worker-1.err").write_text("RotaryEmbedding: Failed to load weights\n")
    link = link_worker_logs(tmp_path / "run", str(session))
    assert link == tmp_path / "run" / "logs" / "ray"
    assert (link / "worker-1.err").read_text().startswith("RotaryEmbedding")
    assert link_worker_logs(tmp_path / "run", str(tmp_path / "on-another-node")) is None


def test_a_resumed_run_keeps_the_link_to_its_earlier_session(tmp_path):
    first, second = tmp_path / "session_1", tmp_path / "session_2"
    for session in (first, second):
        (session / "logs").mkdir(parents=True)
    link_worker_logs(tmp_path / "run", str(first))
    link = link_worker_logs(tmp_path / "run", str(second))
    assert link.resolve() == (second / "logs").resolve()
    assert (tmp_path / "run" / "logs" / "ray-session_1").resolve() == (first / "logs").resolve()


def test_workers_start_with_progress_bars_off():
    env = worker_env(2)
    assert env["HF_HUB_DISABLE_PROGRESS_BARS"] == "1" and env["TQDM_DISABLE"] == "1"


def test_logging_verbose_is_off_unless_asked():
    assert not load_config(["experiment=ci_tiny"])[0].logging.verbose
    assert load_config(["experiment=ci_tiny", "logging.verbose=true"])[0].logging.verbose
