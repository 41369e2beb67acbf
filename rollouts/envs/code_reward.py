"""Reward for a program: does it pass the task's tests (``assert`` statements) when run in the sandbox?

The program and the tests run in one interpreter, the tests in the namespace the program left behind, under
a harness that counts a pass only when the tests ran to their end: the harness reads a fresh random token
from stdin before the program starts and prints it as the last line after the tests. So a program that
exits early (``sys.exit(0)``, ``os._exit(0)``), raises ``SystemExit`` or prints whatever it likes scores 0.
The program's module name is ``solution``, not ``__main__``: an ``if __name__ == "__main__":`` block that
would wait for input does not run. Not defended against: a program that deliberately inspects the
harness's frames to find the token, or returns objects that compare equal to anything.
"""

from __future__ import annotations

import secrets

from rollouts.envs.sandbox import Sandbox, SandboxLimits

HARNESS = """\
import sys


def _areal_check(program, tests):
    token = sys.stdin.readline().strip()
    namespace = {{"__name__": "solution", "__builtins__": __builtins__}}
    try:
        exec(compile(program, "<program>", "exec"), namespace)
        exec(compile(tests, "<tests>", "exec"), namespace)
    except BaseException:  # SystemExit included: leaving before the tests end is failing them
        import traceback
        traceback.print_exc()
        sys.exit(1)
    sys.stdout.write("\\n" + token + "\\n")
    sys.stdout.flush()


_areal_check({program!r}, {tests!r})
"""


def score_with_tests(program: str, tests: str, sandbox: Sandbox, limits: SandboxLimits | None = None) -> float:
    """1.0 if ``program`` followed by ``tests`` runs to completion in ``sandbox`` (under ``limits`` if given,
    else the sandbox's own), 0.0 for any failure of the program: syntax error, failed assert, crash, timeout.

    Raises only when the sandbox itself cannot run (``SandboxUnavailableError``, ``SandboxSetupError``).
    """
    runner = sandbox if limits is None else Sandbox(limits, insecure=sandbox.insecure)
    token = secrets.token_hex(16)
    result = runner.run(HARNESS.format(program=program, tests=tests), stdin=token + "\n")
    lines = result.stdout.splitlines()
    return 1.0 if result.ok and lines and lines[-1] == token else 0.0
