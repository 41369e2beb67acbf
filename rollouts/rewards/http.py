"""The ``http`` built-in reward: a group of completions POSTed as JSON to a reward server you run.

Request body (one POST per group, all completions of one prompt)::

    {"prompts": [prompt] * n, "completions": [text, ...], "completion_ids": [[id, ...], ...],
     "columns": {name: [value] * n for every dataset column}, "trainer_state": {"global_step": s, "max_steps": m}}

``prompt`` is the prompt text, or the conversation as a list of ``{role, content}`` messages. Column values
JSON cannot hold (dates, bytes, ...) are sent as ``str(value)``; numpy values as the matching JSON value.
The answer is JSON, ``{"rewards": [...]}`` or a bare list, one number or null per completion, in order.
"""

from __future__ import annotations

import http.client
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from rollouts.rewards.base import RewardInput, RewardSettings, RewardState, RewardTimeout
from rollouts.tasks.base import TaskSample

log = logging.getLogger(__name__)

BACKOFF_S = 0.2  # before the first retry; doubled before each next one
EXCERPT_CHARS = 200
CONFIG_KEYS = "task.reward_url, task.reward_http_timeout_s and task.reward_http_retries"


class _AttemptFailed(Exception):
    """One attempt failed: ``retry`` for a 5xx, a timeout or a connection error; ``timeout`` for a timeout."""

    def __init__(self, detail: str, retry: bool, timeout: bool = False):
        super().__init__(detail)
        self.retry, self.timeout = retry, timeout


class HttpReward:
    """Scores a group by POSTing it to ``task.reward_url``; retries server errors, timeouts and failed
    connections ``task.reward_http_retries`` times, never a 4xx, and never returns a score for a failed
    request. Each attempt's ``task.reward_http_timeout_s`` bounds the connection and each read."""

    def __init__(self, settings: RewardSettings):
        parts = urllib.parse.urlsplit(settings.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"task.reward_url={settings.url!r}: expected an http:// or https:// URL with a host "
                             "(e.g. http://127.0.0.1:8000/reward)")
        if not settings.http_timeout_s > 0:
            raise ValueError(f"task.reward_http_timeout_s={settings.http_timeout_s}: expected a positive number")
        if settings.http_retries < 0:
            raise ValueError(f"task.reward_http_retries={settings.http_retries}: expected 0 or more")
        self.settings = settings

    def score(self, outputs: list[RewardInput], sample: TaskSample, state: RewardState) -> list[float | None]:
        """One reward (or None: does not apply) per output, in order, from the server's answer."""
        if not outputs:
            return []
        body = json.dumps(request_body(outputs, sample, state), default=_json_value).encode()
        return parse_rewards(self._post(body), len(outputs), self.settings.url)

    def _post(self, body: bytes) -> bytes:
        """The body of the first successful answer; raises ``RewardTimeout`` when the last failed attempt timed
        out, else ``RuntimeError``."""
        attempts, delay = 1 + self.settings.http_retries, BACKOFF_S
        for attempt in range(1, attempts + 1):
            try:
                return self._attempt(body)
            except _AttemptFailed as e:
                failure = e
            if not failure.retry or attempt == attempts:
                break
            log.warning("http reward: POST %s attempt %d/%d failed (%s); retrying in %.1f s",
                        self.settings.url, attempt, attempts, failure, delay)
            time.sleep(delay)
            delay *= 2
        why = "" if failure.retry else " (a client error: not retried)"
        message = (f"http reward: POST {self.settings.url} failed after {attempt} attempt(s), last: {failure}{why}; "
                   f"check {CONFIG_KEYS}")
        raise (RewardTimeout if failure.timeout else RuntimeError)(message)

    def _attempt(self, body: bytes) -> bytes:
        """One POST: the answer's body on 2xx, else ``_AttemptFailed``."""
        timeout_s = self.settings.http_timeout_s
        request = urllib.request.Request(self.settings.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return response.read()
        except urllib.error.HTTPError as e:
            # a 4xx is the request's fault: sending it again cannot fix it
            raise _AttemptFailed(f"HTTP {e.code}: {_excerpt(e.read())}", retry=e.code >= 500) from None
        except urllib.error.URLError as e:
            timed_out = isinstance(e.reason, TimeoutError)
            raise _AttemptFailed(_describe(e.reason, timeout_s), retry=True, timeout=timed_out) from None
        except TimeoutError as e:
            raise _AttemptFailed(_describe(e, timeout_s), retry=True, timeout=True) from None
        except (OSError, http.client.HTTPException) as e:  # the connection dropped mid-answer
            raise _AttemptFailed(_describe(e, timeout_s), retry=True) from None


def request_body(outputs: list[RewardInput], sample: TaskSample, state: RewardState) -> dict[str, Any]:
    """The JSON object POSTed for ``outputs``, all completions of ``sample`` (see the module docstring)."""
    n = len(outputs)
    prompt = sample.prompt if isinstance(sample.prompt, str) else [dict(message) for message in sample.prompt]
    return {
        "prompts": [prompt] * n,
        "completions": [output.text for output in outputs],
        "completion_ids": [list(output.token_ids) for output in outputs],
        "columns": {name: [value] * n for name, value in sample.columns.items()},
        "trainer_state": {"global_step": state.global_step, "max_steps": state.max_steps},
    }


def parse_rewards(body: bytes, n: int, url: str) -> list[float | None]:
    """The rewards in a server's answer, checked: JSON, n entries, each a number or null."""
    try:
        answer = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise RuntimeError(f"http reward: {url} answered non-JSON: {_excerpt(body)}") from None
    rewards = answer.get("rewards") if isinstance(answer, dict) else answer
    if not isinstance(rewards, list) or len(rewards) != n:
        raise RuntimeError(f"http reward: {url} answered {_excerpt(body)}; expected {{\"rewards\": [...]}} or a list "
                           f"with {n} entries, one per completion")
    for i, reward in enumerate(rewards):
        if reward is not None and (isinstance(reward, bool) or not isinstance(reward, (int, float))):
            raise RuntimeError(f"http reward: {url} answered {reward!r} for completion {i}; expected a number "
                               "or null")
    return [None if reward is None else float(reward) for reward in rewards]


def _json_value(value: Any) -> Any:
    """JSON's stand-in for a value ``json`` cannot write: numpy scalars and arrays as numbers and lists, the
    rest (dates, bytes, ...) as ``str(value)``."""
    tolist = getattr(value, "tolist", None)
    return tolist() if callable(tolist) else str(value)


def _describe(error: BaseException | str, timeout_s: float) -> str:
    if isinstance(error, TimeoutError):
        return f"timed out after {timeout_s} s"
    return f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)


def _excerpt(data: bytes) -> str:
    text = data.decode("utf-8", errors="replace")
    return repr(text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "...")
