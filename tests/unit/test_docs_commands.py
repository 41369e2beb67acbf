"""The docs cannot drift from the code: every command README.md and docs/*.md show is checked here.

- every `areal train|eval|config|submit|slurm` command composes a valid config (launch.preflight.validate, which
  runs nothing), in a directory holding the files the docs tell the reader to write (heredocs, my_envs.py);
- every command that names a file of this repository (bench/*.py, configs/..., launch/k8s/...) names one that
  exists, and every `make` target is one the Makefile defines;
- every Python example (```python blocks, and *.py files written by heredocs) compiles; the ones that check
  themselves with asserts run, and the custom environment of docs/agents.md runs as a run calls it.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "console"}
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
HEREDOC = re.compile(r"<<-?\s*['\"]?(\w+)['\"]?")
SEPARATORS = {";", "&&", "||", "|", "&"}
REPO_DIRS = ("areal", "actors", "bench", "configs", "docs", "launch", "learners", "rollouts", "tests")
# `areal` options that take no value; every other option takes the next argument (`--nodes 2`)
FLAGS = {"--wait", "--slurm", "--follow", "-f", "--help", "-h"}
VALIDATED = {"train", "eval", "config", "submit", "slurm"}


def fenced_blocks(doc: Path):
    """(language, line number of the block's first line, [(line number, text)]) of every fenced block."""
    lines, i = doc.read_text().splitlines(), 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        i += 1
        if not fence:
            continue
        indent, body = len(fence.group(1)), []
        while not FENCE.match(lines[i]):
            body.append((i + 1, lines[i][indent:]))
            i += 1
        i += 1
        yield fence.group(2), body[0][0] if body else i, body


def shell_commands(body):
    """(line, argv, heredoc) per command: continued lines joined, comments dropped, `a; b` split, a heredoc's
    body handed over as text (not run as commands)."""
    i = 0
    while i < len(body):
        line_no, text = body[i]
        while text.endswith("\\") and i + 1 < len(body):
            i += 1
            text = text[:-1] + " " + body[i][1].strip()
        i += 1
        heredoc = None
        if (mark := HEREDOC.search(text)) is not None:
            end = next(j for j in range(i, len(body)) if body[j][1].strip() == mark.group(1))
            heredoc, i = "\n".join(t for _, t in body[i:end]), end + 1
            text = text[:mark.start()]
        lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        argv = []
        for token in [*lexer, ";"]:
            if token in SEPARATORS:
                if argv:
                    yield line_no, argv, heredoc
                argv = []
            elif argv or not re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", token):  # VAR=value before a program: env
                argv.append(token)


def collect():
    commands, python, written = [], [], {}
    for doc in DOCS:
        name = doc.relative_to(ROOT).as_posix()
        for lang, line, body in fenced_blocks(doc):
            if lang == "python":
                python.append(pytest.param("\n".join(t for _, t in body), id=f"{name}:{line}"))
            if lang not in SHELL:
                continue
            for line_no, argv, heredoc in shell_commands(body):
                commands.append(pytest.param(argv, id=f"{name}:{line_no}"))
                if heredoc is not None and ">" in argv:
                    written[argv[argv.index(">") + 1]] = heredoc + "\n"
                    if argv[-1].endswith(".py"):
                        python.append(pytest.param(heredoc, id=f"{name}:{line_no}:heredoc"))
    return commands, python, written


COMMANDS, PYTHON, WRITTEN = collect()
AREAL = [c for c in COMMANDS if Path(c.values[0][0]).name == "areal" and len(c.values[0]) > 1
         and c.values[0][1] in VALIDATED]


def overrides_of(argv: list[str]) -> list[str]:
    """The config overrides of `areal SUBCOMMAND ...`: its positional arguments (`eval`'s first is the model)."""
    positional, args = [], iter(argv[2:])
    for arg in args:
        if arg.startswith("-"):
            if arg not in FLAGS and "=" not in arg:
                next(args, None)  # the option's value
        else:
            positional.append(arg)
    return positional[1:] if argv[1] == "eval" else positional


def agents_example(marker: str) -> str:
    [source] = [p.values[0] for p in PYTHON if p.id.startswith("docs/agents.md") and marker in p.values[0]]
    return source


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The working directory of the docs' commands: the files they write (`cat > my_rewards.py <<'PY'`) and the
    my_envs.py docs/agents.md says to save, importable as `my_rewards:correct` and `my_envs:GuessingEnvironment`."""
    work = tmp_path_factory.mktemp("docs")
    files = {**WRITTEN, "my_envs.py": agents_example("class GuessingEnvironment")}
    for name, text in files.items():
        (work / name).write_text(text)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        patch.syspath_prepend(str(work))
        yield work
        for name in files:
            sys.modules.pop(Path(name).stem, None)


def test_the_docs_show_commands():
    assert len(AREAL) >= 10 and len(PYTHON) >= 5, "the extraction found almost nothing: is the fence syntax changed?"


@pytest.mark.parametrize("argv", AREAL)
def test_every_areal_command_composes_a_valid_config(argv, workdir):
    from launch.preflight import ConfigError, validate

    try:
        validate(overrides_of(argv), local=False)
    except ConfigError as exc:
        pytest.fail(f"`{shlex.join(argv)}` does not compose: {exc}")


@pytest.mark.parametrize("argv", COMMANDS)
def test_every_repository_file_a_command_names_exists(argv):
    words = dict.fromkeys(w for arg in argv for w in (arg, arg.split("=", 1)[-1]))  # file=PATH names PATH
    named = [w for w in words if w.split("/", 1)[0] in REPO_DIRS and "/" in w]
    missing = [w for w in named if not (ROOT / w).exists()]
    assert not missing, f"`{shlex.join(argv)}` names {missing}, which this repository does not have"
    if argv[0] == "make":
        targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.MULTILINE)
        assert set(argv[1:]) <= set(targets), f"`{shlex.join(argv)}`: the Makefile's targets are {targets}"


@pytest.mark.parametrize("source", PYTHON)
def test_every_python_example_compiles(source):
    compile(source, "<docs>", "exec")


@pytest.mark.parametrize("source", [p for p in PYTHON if "assert " in p.values[0] and "my_envs" not in p.values[0]])
def test_every_self_checking_python_example_runs(source):
    if "Sandbox(" in source:
        from rollouts.envs.sandbox import Sandbox, SandboxSetupError, SandboxUnavailableError

        try:
            Sandbox().run("print(1)")
        except (SandboxUnavailableError, SandboxSetupError, OSError) as exc:
            pytest.skip(f"no sandbox on this machine: {exc}")
    exec(compile(source, "<docs>", "exec"), {"__name__": "docs_example"})


def test_the_custom_environment_of_agents_md_runs_as_a_run_calls_it(workdir):
    """docs/agents.md: my_envs.py as the docs show it, its hand-driven episode, then env.factory as a run uses it:
    named in the config, called with the run's task once per episode."""
    from launch.preflight import validate
    from rollouts.envs.factory import environment_maker

    exec(agents_example("from my_envs import"), {"__name__": "docs_example"})

    [command] = [c.values[0] for c in AREAL if "env.factory=my_envs:GuessingEnvironment" in c.values[0]]
    cfg, _ = validate(overrides_of(command), local=False)
    make_environment = environment_maker(cfg, "")
    env = make_environment()
    assert type(env).__name__ == "GuessingEnvironment" and env.task is not None
    sample = env.task.train[0]
    assert env.reset(sample) == sample.prompt
    assert env.step(f" {int(sample.reference) + 1}").observation == " lower\n"
    result = env.step(f" {sample.reference}")
    assert result.done and result.reward == 1.0
    env.close()
