"""The http reward posts a group to a real local server, reads its answer, and retries only what can recover."""

import contextlib
import datetime
import json
import pickle
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rollouts.rewards import http as http_reward
from rollouts.rewards.base import RewardInput, RewardSettings, RewardState, RewardTimeout
from rollouts.rewards.http import HttpReward
from rollouts.tasks.base import TaskSample

OUTPUTS = [RewardInput("four", token_ids=(7, 8)), RewardInput("five", token_ids=(9,))]
SAMPLE = TaskSample(id="row-3", prompt="2 + 2 =", reference="4",
                    columns={"answer": "4", "level": 1, "added": datetime.date(2024, 5, 1), "raw": b"\x01"})
STATE = RewardState(global_step=3, max_steps=10)


class RewardServer:
    """A local server that answers each POST with the next scripted (status, body, delay) and records the
    bodies it received; the last script entry repeats."""

    def __init__(self, script):
        self.script, self.bodies = list(script), []
        self.release = threading.Event()  # cuts a slow answer's wait short at teardown
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                server.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                status, body, delay = server.script[min(len(server.bodies), len(server.script)) - 1]
                server.release.wait(delay)
                payload = body if isinstance(body, bytes) else json.dumps(body).encode()
                with contextlib.suppress(ConnectionError):  # a client that timed out has hung up
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/reward"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def serve():
    """serve(*script) starts a RewardServer; every server started is shut down after the test."""
    servers = []

    def start(*script):
        servers.append(RewardServer(script))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def fast_backoff(monkeypatch):
    monkeypatch.setattr(http_reward, "BACKOFF_S", 0.01)


def reward_for(server, **settings) -> HttpReward:
    return HttpReward(RewardSettings(url=server.url, **settings))


def test_posts_the_group_and_returns_the_rewards(serve):
    server = serve((200, {"rewards": [1, 0.5]}, 0))
    assert reward_for(server).score(OUTPUTS, SAMPLE, STATE) == [1.0, 0.5]
    assert server.bodies == [{
        "prompts": ["2 + 2 =", "2 + 2 ="],
        "completions": ["four", "five"],
        "completion_ids": [[7, 8], [9]],
        "columns": {"answer": ["4", "4"], "level": [1, 1], "added": ["2024-05-01"] * 2, "raw": ["b'\\x01'"] * 2},
        "trainer_state": {"global_step": 3, "max_steps": 10},
    }]


def test_a_conversation_prompt_goes_as_its_messages(serve):
    server = serve((200, [0, 0], 0))
    messages = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 2?"})
    reward_for(server).score(OUTPUTS, TaskSample(id="c", prompt=messages, reference="4"), STATE)
    assert server.bodies[0]["prompts"] == [list(messages)] * 2
    assert server.bodies[0]["columns"] == {}


def test_a_bare_list_answer_and_null_entries(serve):
    server = serve((200, [None, 2], 0))
    assert reward_for(server).score(OUTPUTS, SAMPLE, STATE) == [None, 2.0]


def test_a_server_error_is_retried(serve):
    server = serve((500, "busy", 0), (200, {"rewards": [1, 1]}, 0))
    assert reward_for(server, http_retries=1).score(OUTPUTS, SAMPLE, STATE) == [1.0, 1.0]
    assert len(server.bodies) == 2


def test_a_server_that_keeps_failing_fails_after_every_retry(serve, fast_backoff):
    server = serve((503, "down", 0))
    with pytest.raises(RuntimeError, match=r"after 3 attempt\(s\).*HTTP 503.*task.reward_http_retries") as info:
        reward_for(server, http_retries=2).score(OUTPUTS, SAMPLE, STATE)
    assert server.url in str(info.value) and "task.reward_url" in str(info.value)
    assert len(server.bodies) == 3


def test_a_client_error_is_not_retried(serve):
    server = serve((404, "no such route", 0), (200, [1, 1], 0))
    with pytest.raises(RuntimeError, match=r"after 1 attempt\(s\).*HTTP 404.*no such route.*not retried"):
        reward_for(server, http_retries=2).score(OUTPUTS, SAMPLE, STATE)
    assert len(server.bodies) == 1


def test_a_server_slower_than_the_timeout_times_out_after_the_retries(serve, fast_backoff):
    server = serve((200, [1, 1], 5.0))
    with pytest.raises(RewardTimeout, match=r"after 2 attempt\(s\).*timed out.*task.reward_http_timeout_s"):
        reward_for(server, http_timeout_s=0.25, http_retries=1).score(OUTPUTS, SAMPLE, STATE)
    assert len(server.bodies) == 2


def test_no_server_at_all_is_a_connection_error(serve, fast_backoff):
    server = serve((200, [1, 1], 0))
    server.close()
    with pytest.raises(RuntimeError, match=r"after 2 attempt\(s\).*ConnectionRefusedError") as info:
        reward_for(server, http_retries=1).score(OUTPUTS, SAMPLE, STATE)
    assert not isinstance(info.value, RewardTimeout)


@pytest.mark.parametrize("body, complaint", [
    ({"rewards": [1]}, r"answered .*\[1\].*with 2 entries"),
    ([1, 2, 3], r"with 2 entries"),
    ({"scores": [1, 2]}, r"expected \{\"rewards\": \[...\]\}"),
    (b"<html>oops</html>", r"non-JSON: '<html>oops</html>'"),
    (["1", 2], r"'1' for completion 0"),
])
def test_an_answer_that_is_not_one_reward_per_completion_fails(serve, body, complaint):
    server = serve((200, body, 0))
    with pytest.raises(RuntimeError, match=complaint):
        reward_for(server).score(OUTPUTS, SAMPLE, STATE)
    assert len(server.bodies) == 1


@pytest.mark.parametrize("url", ["", "ftp://host/reward", "127.0.0.1:8000/reward", "http:///reward"])
def test_the_url_must_be_http_with_a_host(url):
    with pytest.raises(ValueError, match="task.reward_url"):
        HttpReward(RewardSettings(url=url))


def test_survives_pickling(serve):
    server = serve((200, [1, 0], 0))
    copy = pickle.loads(pickle.dumps(reward_for(server)))
    assert copy.score(OUTPUTS, SAMPLE, STATE) == [1.0, 0.0]
